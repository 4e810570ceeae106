//! Compiles `proto/checkout/**/*.proto` with protox (pure Rust: no system `protoc`) and generates
//! the prost messages and tonic clients/servers, plus the descriptor set that reflection serves.

use std::path::{Path, PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let mut files = Vec::new();
    collect_protos(&root.join("checkout"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed={}", root.join("checkout").display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let fds = protox::compile(&files, [&root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("checkout_descriptor.bin"), fds.encode_to_vec())?;

    // No default stubs: a new RPC does not compile until its service implements it.
    // Messages with payment tokens or addresses get a redacting `Debug` (src/redact.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::StrictCodec")
        .skip_debug([
            ".checkout.common.v1.Address",
            ".checkout.checkout.v1.StartCheckoutRequest",
            ".checkout.payment.v1.AuthorizePaymentRequest",
        ])
        .compile_fds(fds)?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
