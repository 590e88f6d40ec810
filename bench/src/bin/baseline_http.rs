//! A bare actix-web JSON endpoint answering command frames the way
//! Switchboard's `POST /<project>/api/command` does: the HTTP baseline of
//! `bench/run`.

fn main() -> std::io::Result<()> {
    switchboard_bench::system::raise_open_files_limit();
    switchboard_bench::baseline::serve(
        switchboard_bench::baseline::Kind::Http,
        &switchboard_bench::baseline::bind_argument(),
    )
}
