//! Generates the gRPC code from `proto/*.proto` with protox (a pure-Rust protobuf compiler),
//! so building needs no system `protoc`.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let files = ["proto/rpc.proto", "proto/awscni_ext.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
