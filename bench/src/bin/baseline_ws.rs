//! A bare actix-ws server answering command frames the way Switchboard's
//! WebSocket does: the WebSocket baseline of `bench/run`.

fn main() -> std::io::Result<()> {
    switchboard_bench::system::raise_open_files_limit();
    switchboard_bench::baseline::serve(
        switchboard_bench::baseline::Kind::WebSocket,
        &switchboard_bench::baseline::bind_argument(),
    )
}
