//! Generates the host-agent API into OUT_DIR (never into src/).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=moat/agent.proto");
    tonic_prost_build::configure().compile_protos(&["moat/agent.proto"], &["."])?;
    Ok(())
}
