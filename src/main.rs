fn main() -> std::process::ExitCode {
    versa::cli::main()
}
