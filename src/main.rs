//! The `lank8s` binary: parses the command line and runs it.

fn main() -> std::process::ExitCode {
    lank8s::cli::run()
}
