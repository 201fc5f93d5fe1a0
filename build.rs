// `embed_migrations!` does not track the SQL files it embeds, so rebuild when
// any of them changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
