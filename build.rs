//! Generates the node agent's gRPC server code from the vendored protos: `proto/csi.proto` (the
//! CSI spec's) and `proto/service.proto` (the Secrets Store CSI driver's provider service).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    println!("cargo:rerun-if-changed=proto/service.proto");
    let descriptors = protox::compile(["csi.proto", "service.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .compile_fds(descriptors)?;
    Ok(())
}
