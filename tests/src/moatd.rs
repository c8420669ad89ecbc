//! Runs the real moatd binary in temporary directories and talks CRI to it over its socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// The moatd binary next to the test executable (`target/<profile>/moatd`), or `$MOATD_BIN`.
pub fn moatd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MOATD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("moatd");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p moat-host --bins` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The VM backend the e2e tests run pods on: `$MOAT_E2E_BACKEND` (`qemu` or `builtin`),
/// `qemu` when unset. scripts/test.sh runs the suite on QEMU and, where the CPU has
/// hardware virtualization, runs the sandbox e2e tests again on the built-in VMM.
pub fn e2e_backend() -> &'static str {
    match std::env::var("MOAT_E2E_BACKEND").as_deref() {
        Err(_) | Ok("" | "qemu") => "qemu",
        Ok("builtin") => "builtin",
        Ok(other) => panic!("MOAT_E2E_BACKEND={other:?}: use qemu or builtin"),
    }
}

/// Whether the e2e tests run pods on the built-in VMM (see `e2e_backend`).
pub fn on_builtin() -> bool {
    e2e_backend() == "builtin"
}

/// A moatd process; SIGTERMed and reaped on drop.
pub struct Moatd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra_config: String,
    /// The CRI socket.
    pub socket: PathBuf,
}

impl Moatd {
    /// Starts moatd with `extra_config` appended to a config that puts every directory in a
    /// fresh temporary dir.
    pub async fn start(extra_config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let socket = dir.path().join("run/moat.sock");
        let mut m = Self {
            child: None,
            dir,
            extra_config: extra_config.to_owned(),
            socket,
        };
        m.spawn().await;
        m
    }

    /// The CNI conf dir moatd reads.
    pub fn cni_dir(&self) -> PathBuf {
        self.dir.path().join("cni")
    }

    /// The root dir (state).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Its run_dir (sockets, the VMs' directories).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The config file path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Writes the config moatd runs with.
    pub fn write_config(&self) {
        let d = self.dir.path();
        let log = if self.extra_config.contains("[log]") {
            ""
        } else {
            "[log]\nlevel = \"moat_host=debug,info\"\n"
        };
        // The default handler's backend is pinned (`auto` would pick by host), unless the
        // test configures handlers itself.
        let handler = if self.extra_config.contains("[runtime.handlers") {
            String::new()
        } else {
            format!("[runtime.handlers.moat]\nbackend = \"{}\"\n", e2e_backend())
        };
        // Test daemons run side by side: each /metrics on a free port unless asked.
        let metrics = if self.extra_config.contains("[metrics]") {
            ""
        } else {
            "[metrics]\naddress = \"127.0.0.1:0\"\n"
        };
        let cfg = format!(
            "root_dir = \"{}\"\nrun_dir = \"{}\"\n{log}{metrics}[cni]\nconf_dir = \"{}\"\n{}\n{handler}",
            d.join("root").display(),
            d.join("run").display(),
            d.join("cni").display(),
            self.extra_config
        );
        std::fs::write(self.config_path(), cfg).expect("write config");
    }

    async fn spawn(&mut self) {
        self.write_config();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("moatd.log"))
            .expect("log");
        let child = Command::new(moatd_bin())
            .arg("--config")
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn moatd");
        self.child = Some(child);
        let sock = self.socket.clone();
        let up = crate::wait_until(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        })
        .await;
        assert!(up, "moatd did not come up; log:\n{}", self.log());
    }

    /// moatd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moatd.log")).unwrap_or_default()
    }

    /// Stops moatd (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we own and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Stops and starts moatd again on the same directories.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Kills moatd with SIGKILL (a crash) and starts it again.
    pub async fn crash_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn().await;
    }

    /// A channel over the CRI socket.
    pub async fn channel(&self) -> Channel {
        connect(&self.socket).await
    }

    /// A RuntimeService client.
    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    /// Pulls `image` (panics if the pull fails).
    pub async fn pull(&self, image: &str) {
        self.images()
            .await
            .pull_image(k8s_cri::v1::PullImageRequest {
                image: Some(k8s_cri::v1::ImageSpec {
                    image: image.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("pull {image}: {e}"));
    }

    /// An ImageService client.
    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }
}

/// Connects a gRPC channel to a Unix socket.
pub async fn connect(socket: &Path) -> Channel {
    let p = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://moatd")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .expect("connect to the CRI socket")
}

impl Moatd {
    /// Stops every pod through the CRI when pods have networks, so CNI DEL runs and no
    /// netns, veth, IPAM reservation or iptables rule outlives a test that failed midway.
    fn stop_networked_pods(&self) {
        let networked = std::fs::read_dir(self.root().join("cni"))
            .map(|d| d.count() > 0)
            .unwrap_or(false);
        if !networked || self.child.is_none() {
            return;
        }
        let sock = self.socket.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let stop_all = async {
                    let mut c = RuntimeServiceClient::new(connect(&sock).await);
                    let pods = c
                        .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest { filter: None })
                        .await
                        .map(|r| r.into_inner().items)
                        .unwrap_or_default();
                    for p in pods {
                        let _ = c
                            .stop_pod_sandbox(k8s_cri::v1::StopPodSandboxRequest {
                                pod_sandbox_id: p.id,
                            })
                            .await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(30), stop_all).await;
            });
        })
        .join();
    }
}

impl Drop for Moatd {
    fn drop(&mut self) {
        self.stop_networked_pods();
        self.stop();
        // A test that failed half-way leaves its pods' VMs running (they outlive moatd by
        // design) and their binds mounted: end both, so nothing leaks past the test.
        let dir = self.dir.path().display().to_string();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            if String::from_utf8_lossy(&cmd).contains(&dir)
                && let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>()
            {
                // SAFETY: kill(2) on a pid read from /proc; at worst the process is gone.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: umount2 on a NUL-terminated path we own.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}
