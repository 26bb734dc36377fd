//! The `editthinker-eval` command line (docs/eval.md).

fn main() -> std::process::ExitCode {
    editthinker_eval::run::main()
}
