//! A fake guest for the managers' unit tests: containers that exit (or not) on a signal,
//! and a record of every call made.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use super::*;

/// How a fake container answers signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Exits with 128 + the signal on any signal.
    ExitsOnSignal,
    /// Ignores SIGTERM; SIGKILL ends it.
    IgnoresTerm,
    /// Never exits: the VM does not answer waits.
    Hangs,
    /// Survives every signal; the guest answers that it still runs.
    Immortal,
}

/// A guest whose containers behave as told.
#[derive(Debug, Default)]
pub struct FakeGuest {
    containers: Mutex<HashMap<String, (Behaviour, Option<i32>)>>,
    /// Every call, as `"name id arg"`.
    pub calls: Mutex<Vec<String>>,
}

impl FakeGuest {
    /// A guest with one running container `id`.
    pub fn with(id: &str, b: Behaviour) -> Self {
        let g = Self::default();
        g.containers
            .lock()
            .expect("lock")
            .insert(id.to_owned(), (b, None));
        g
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }

    fn log(&self, call: String) {
        self.calls.lock().expect("lock").push(call);
    }

    fn unsupported<T>(&self, what: &str) -> Result<T, GuestError> {
        self.log(what.to_owned());
        Err(GuestError::Failed(format!("{what} is not faked")))
    }
}

#[async_trait::async_trait]
impl Guest for FakeGuest {
    async fn health(&self) -> Result<AgentHealth, GuestError> {
        Ok(AgentHealth {
            version: "fake".into(),
            rss_kib: 1,
            root_fs: "tmpfs".into(),
        })
    }
    async fn setup(&self, _s: SandboxSetup) -> Result<(), GuestError> {
        self.unsupported("setup")
    }
    async fn shutdown(&self) -> Result<(), GuestError> {
        self.unsupported("shutdown")
    }
    async fn setup_network(&self, _n: GuestNetwork) -> Result<(), GuestError> {
        self.unsupported("setup_network")
    }
    async fn create_container(&self, _k: ContainerCreate) -> Result<ContainerUser, GuestError> {
        self.unsupported("create_container")
    }
    async fn start_container(&self, _id: &str) -> Result<(), GuestError> {
        self.unsupported("start_container")
    }
    async fn wait_container(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<Option<ExitInfo>, GuestError> {
        self.log(format!("wait {id} {wait:?}"));
        let state = self.containers.lock().expect("lock").get(id).copied();
        match state {
            None => Err(GuestError::Unknown(format!("no container {id}"))),
            Some((Behaviour::Hangs, _)) => {
                tokio::time::sleep(wait).await;
                Err(GuestError::NoAnswer(wait))
            }
            Some((_, Some(code))) => Ok(Some(ExitInfo {
                code,
                oom_killed: false,
                finished_at: 1,
                start_error: String::new(),
            })),
            Some((_, None)) => {
                tokio::time::sleep(wait).await;
                Ok(None)
            }
        }
    }
    async fn signal_container(&self, id: &str, signal: i32) -> Result<(), GuestError> {
        self.log(format!("signal {id} {signal}"));
        let mut all = self.containers.lock().expect("lock");
        let Some((b, exit)) = all.get_mut(id) else {
            return Err(GuestError::Unknown(format!("no container {id}")));
        };
        let dies = match b {
            Behaviour::ExitsOnSignal => true,
            Behaviour::IgnoresTerm => signal == libc::SIGKILL,
            Behaviour::Hangs | Behaviour::Immortal => false,
        };
        if dies && exit.is_none() {
            *exit = Some(128 + signal);
        }
        Ok(())
    }
    async fn remove_container(&self, id: &str) -> Result<(), GuestError> {
        self.log(format!("remove {id}"));
        self.containers.lock().expect("lock").remove(id);
        Ok(())
    }
    async fn list_containers(&self) -> Result<Vec<GuestContainer>, GuestError> {
        let map = self.containers.lock().expect("lock");
        Ok(map
            .iter()
            .map(|(id, (_, exit))| GuestContainer {
                id: id.clone(),
                started: true,
                exited: exit.is_some(),
            })
            .collect())
    }
    async fn exec_sync(
        &self,
        _id: &str,
        _cmd: Vec<String>,
        _timeout: Duration,
    ) -> Result<ExecOutcome, GuestError> {
        self.unsupported("exec_sync")
    }
    async fn output(&self, _id: &str) -> Result<OutputStream, GuestError> {
        self.unsupported("output")
    }
    async fn update_resources(
        &self,
        _id: &str,
        _cpu: Option<(i64, i64)>,
        _memory: Option<i64>,
    ) -> Result<(), GuestError> {
        self.unsupported("update_resources")
    }
    async fn stats(&self, _id: &str) -> Result<Usage, GuestError> {
        self.unsupported("stats")
    }
    async fn exec(
        &self,
        _spec: ExecSpec,
        _input: mpsc::Receiver<StdinEvent>,
    ) -> Result<ExecEvents, GuestError> {
        self.unsupported("exec")
    }
    async fn attach_input(
        &self,
        _id: &str,
        _input: mpsc::Receiver<StdinEvent>,
    ) -> Result<(), GuestError> {
        self.unsupported("attach_input")
    }
    async fn port_forward(
        &self,
        _port: u16,
        _input: mpsc::Receiver<Vec<u8>>,
    ) -> Result<PortEvents, GuestError> {
        self.unsupported("port_forward")
    }
}
