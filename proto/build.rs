//! Generates the Rust code for `kubetemplater/v1/*.proto` without a system `protoc`: `protox`
//! (a protobuf compiler in Rust) parses the files into a `FileDescriptorSet`, and
//! `tonic-prost-build` turns that into messages, clients and servers in `OUT_DIR`.

use std::{env, error::Error, fs, path::PathBuf};

/// The proto files, relative to the crate root, which is also the import root.
const PROTOS: &[&str] = &[
    "kubetemplater/v1/worker.proto",
    "kubetemplater/v1/admin.proto",
    "kubetemplater/v1/identity.proto",
];

/// Name of the encoded descriptor set in `OUT_DIR` (included by `proto::FILE_DESCRIPTOR_SET`).
const DESCRIPTOR_SET: &str = "kubetemplater_v1_descriptor.bin";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new([&root]).map_err(|e| format!("{e:?}"))?;
    compiler
        // Comments become the docs of the generated code and stay visible through reflection.
        .include_source_info(true)
        // google/protobuf/*.proto too, so a reflection service can resolve every type.
        .include_imports(true)
        .open_files(PROTOS)
        .map_err(|e| format!("{e:?}"))?;

    // `file_descriptor_set_path` only takes effect when prost-build runs protoc itself; with
    // `compile_fds` the set is written here instead.
    fs::write(
        out_dir.join(DESCRIPTOR_SET),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
