//! The `chaos` binary: everything lives in the library.
fn main() {
    std::process::exit(chaos_user::run::main());
}
