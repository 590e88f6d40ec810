fn main() -> std::process::ExitCode {
    switchboard::cli::run()
}
