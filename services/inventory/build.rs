//! `sqlx::migrate!` embeds the migration files at build time, but cargo does not know it reads
//! them: a new migration file would otherwise not rebuild the crate that embeds its folder.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations/sqlite/inventory");
    println!("cargo:rerun-if-changed=../../migrations/postgres/inventory");
}
