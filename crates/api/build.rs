//! Generates the gRPC API from `proto/plexus/v1` with a vendored `protoc`,
//! so building needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let proto_dir = "../../proto";
    let files = [
        "../../proto/plexus/v1/destination.proto",
        "../../proto/plexus/v1/identity.proto",
    ];
    tonic_prost_build::configure()
        // Serde lets the proxy read its static YAML file and print /config in
        // the same model the Destination API sends, without a second model.
        .message_attribute(
            ".plexus.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .enum_attribute(
            ".plexus.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .compile_protos(&files, &[proto_dir])?;
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}
