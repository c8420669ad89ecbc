//! Builds a VM from a `VmmConfig` (`build`) and runs it to its end (`Machine::run`).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use libc::EFD_NONBLOCK;
use vmm_sys_util::eventfd::EventFd;

use crate::api::{ApiServer, Controller, VmInfo};
use crate::arch::x86_64::layout::{I8042_DATA_PORT, SERIAL_IRQ, SERIAL_PORT};
use crate::arch::x86_64::{gdt, mptable, paging};
use crate::boot;
use crate::config::VmmConfig;
use crate::control::VmControl;
use crate::devices::bus::{Bus, SharedDevice};
use crate::devices::legacy::i8042::{I8042, I8042_LEN};
use crate::devices::legacy::ignored::{IGNORED_PORTS, IRQCHIP_PORTS, Ignored};
use crate::devices::legacy::serial::{ConsoleLog, FirstByte, SERIAL_PORT_LEN, SerialDevice};
use crate::kick::{VcpuKick, install_kick_handler};
use crate::kvm::vcpu::{VcpuBoot, check_vcpu_count, create_vcpu, supported_cpuid};
use crate::kvm::{self, Vm};
use crate::vcpu_loop::{Buses, VcpuRunner};
use crate::virtio_attach::attach_all;
use crate::vmm::{Exit, VmmError};

/// A built VM, not yet running.
pub struct Machine {
    // Field order is drop order: the control socket first, vCPUs and devices before the VM
    // and its memory.
    api: Option<ApiServer>,
    vcpus: Vec<VcpuFd>,
    buses: Buses,
    control: Arc<VmControl>,
    first_serial_byte: FirstByte,
    entered: Instant,
    built: Duration,
    id: String,
    vm: Vm,
}

/// How a run went.
#[derive(Debug, Clone, Copy)]
pub struct RunReport {
    /// How the VM ended.
    pub exit: Exit,
    /// From `build` entry to the guest's first serial byte, if it wrote one.
    pub first_serial_byte: Option<Duration>,
    /// From `build` entry to the VM being ready to run.
    pub build_time: Duration,
    /// The process's peak resident set size (VmHWM), in KiB, when known.
    pub peak_rss_kib: Option<u64>,
}

fn place(
    bus: &mut Bus,
    dev: SharedDevice,
    base: u64,
    len: u64,
    what: &str,
) -> Result<(), VmmError> {
    bus.insert(dev, base, len).map_err(|source| VmmError::Bus {
        what: what.to_owned(),
        source,
    })
}

/// COM1, the i8042, and the ports answered with "nothing here".
fn add_legacy_devices(
    vm: &Vm,
    pio: &mut Bus,
    config: &VmmConfig,
    control: &Arc<VmControl>,
) -> Result<FirstByte, VmmError> {
    let log =
        ConsoleLog::open(&config.console_log, config.console_log_caps()).map_err(|source| {
            VmmError::ConsoleLog {
                path: config.console_log.clone(),
                source,
            }
        })?;
    let first = log.first_byte();
    let irq = EventFd::new(EFD_NONBLOCK).map_err(|source| VmmError::EventFd {
        what: "the serial interrupt",
        source,
    })?;
    vm.register_irqfd(&irq, SERIAL_IRQ)?;
    let serial = SerialDevice::new(log, irq);
    place(
        pio,
        Arc::new(Mutex::new(serial)),
        u64::from(SERIAL_PORT),
        SERIAL_PORT_LEN,
        "serial",
    )?;

    let c = control.clone();
    let i8042 = I8042::new(Box::new(move || c.request_exit(Exit::GuestShutdown)));
    place(
        pio,
        Arc::new(Mutex::new(i8042)),
        u64::from(I8042_DATA_PORT),
        I8042_LEN,
        "i8042",
    )?;

    let extra: &[_] = if vm.has_irqchip() { &[] } else { IRQCHIP_PORTS };
    for &(base, len, fill, what) in IGNORED_PORTS.iter().chain(extra) {
        place(
            pio,
            Arc::new(Mutex::new(Ignored::new(fill))),
            u64::from(base),
            u64::from(len),
            what,
        )?;
    }
    Ok(first)
}

/// Builds the VM `config` describes: memory, devices, the loaded kernel and its boot data,
/// and the vCPUs in their boot state.
pub fn build(config: &VmmConfig) -> Result<Machine, VmmError> {
    let entered = Instant::now();
    config.validate()?;
    let kvm = kvm::open()?;
    check_vcpu_count(&kvm, config.vcpus)?;
    let mem = kvm::memory::create_guest_memory(config.memory_mib)?;
    let vm = Vm::new(&kvm, mem)?;
    if !vm.has_irqchip() && config.vcpus > 1 {
        return Err(VmmError::NoIrqchipSmp);
    }
    let control = VmControl::new();

    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let first_serial_byte = add_legacy_devices(&vm, &mut pio, config, &control)?;
    let placed = attach_all(config, &vm, &mut mmio)?;

    let mem = vm.memory();
    let kernel = boot::load_kernel(mem, &config.kernel)?;
    let initramfs = match &config.initramfs {
        Some(path) => Some(boot::load_initramfs(mem, path, kernel.end)?),
        None => None,
    };
    let devices: Vec<_> = placed.iter().map(|p| (p.addr, p.irq)).collect();
    let cmdline = boot::build_cmdline(&config.cmdline, &devices, boot::cmdline_capacity(&kernel))?;
    let cmdline_len = boot::write_cmdline(mem, &cmdline)?;
    let params = boot::boot_params_for(&kernel, cmdline_len, initramfs, config.memory_mib << 20);
    boot::write_boot_params(mem, &params)?;
    mptable::write_mptable(mem, config.vcpus)?;
    gdt::write_gdt(mem).map_err(|source| VmmError::GuestMemory {
        what: "the GDT",
        source,
    })?;
    let cr3 = paging::write_page_tables(mem).map_err(|source| VmmError::GuestMemory {
        what: "the page tables",
        source,
    })?;

    let cpuid = supported_cpuid(&kvm)?;
    let vcpus = (0..config.vcpus)
        .map(|index| {
            let boot = VcpuBoot {
                index,
                count: config.vcpus,
                entry: kernel.entry,
                boot_params: crate::arch::x86_64::layout::ZERO_PAGE_START,
                cr3,
            };
            create_vcpu(&vm, &cpuid, boot)
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Confinement, first half (`jail::confine`: mount namespace, capabilities): these
    // belong to a thread, so it comes before the VMM's first thread (the control socket's,
    // just below), once everything above is open.
    if let Some(jail) = &config.jail {
        crate::jail::confine(jail, config)?;
    }

    // Bound now (inside the jail, which keeps its directory): requests that come before
    // `run` wait for it (a pause or shutdown asked for early applies when the vCPUs start).
    let api = match &config.api_socket {
        Some(path) => {
            let info = VmInfo {
                vcpus: config.vcpus,
                memory_mib: config.memory_mib,
            };
            let controller = Controller::new(control.clone(), info);
            Some(
                ApiServer::start(path, controller).map_err(|source| VmmError::Api {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };

    let built = entered.elapsed();
    tracing::info!(
        vm = %config.id,
        vcpus = config.vcpus,
        memory_mib = config.memory_mib,
        entry = format_args!("{:#x}", kernel.entry),
        irqchip = vm.has_irqchip(),
        virtio_devices = placed.len(),
        build_ms = built.as_secs_f64() * 1e3,
        "VM built"
    );
    Ok(Machine {
        api,
        vcpus,
        buses: Buses {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
        },
        control,
        first_serial_byte,
        entered,
        built,
        id: config.id.clone(),
        vm,
    })
}

impl Machine {
    /// When the guest wrote its first serial byte (filled in while it runs).
    pub fn first_serial_byte(&self) -> FirstByte {
        self.first_serial_byte.clone()
    }

    /// The run state, to pause, resume or stop the VM from another thread.
    pub fn control(&self) -> Arc<VmControl> {
        self.control.clone()
    }

    /// Runs the VM until it ends: one thread per vCPU; the control socket (bound by `build`)
    /// serves until the end.
    pub fn run(mut self) -> Result<RunReport, VmmError> {
        install_kick_handler().map_err(VmmError::Signal)?;
        let threads = self.start_vcpus();
        let exit = match &threads {
            Ok(_) => self.control.wait_for_exit(),
            Err(_) => Exit::Crashed,
        };
        self.control.request_exit(exit);
        let handles = match threads {
            Ok(h) => h,
            Err((h, e)) => {
                join(h);
                return Err(e);
            }
        };
        join(handles);
        drop(self.api.take());
        let report = RunReport {
            exit,
            first_serial_byte: self
                .first_serial_byte
                .get()
                .map(|t| t.saturating_duration_since(self.entered)),
            build_time: self.built,
            peak_rss_kib: peak_rss_kib(),
        };
        tracing::info!(
            vm = %self.id,
            ?exit,
            first_serial_byte_ms = report.first_serial_byte.map(|d| d.as_secs_f64() * 1e3),
            peak_rss_kib = report.peak_rss_kib,
            uptime_ms = self.control.uptime().as_millis() as u64,
            "VM ended"
        );
        Ok(report)
    }

    /// Starts a thread per vCPU; on failure, the threads started so far and the error.
    #[allow(clippy::type_complexity)]
    fn start_vcpus(&mut self) -> Result<Vec<JoinHandle<()>>, (Vec<JoinHandle<()>>, VmmError)> {
        let mut handles = Vec::new();
        for (index, vcpu) in self.vcpus.drain(..).enumerate() {
            let kick = Arc::new(VcpuKick::new());
            self.control.add_vcpu(kick.clone());
            let runner = VcpuRunner {
                vcpu,
                index: index as u8,
                buses: self.buses.clone(),
                control: self.control.clone(),
                kick,
                halt_parks: !self.vm.has_irqchip(),
            };
            match runner.spawn(&self.id) {
                Ok(h) => handles.push(h),
                Err(source) => {
                    self.control.vcpu_ended();
                    self.control.request_exit(Exit::Crashed);
                    let what = format!("vcpu{index}");
                    return Err((handles, VmmError::Thread { what, source }));
                }
            }
        }
        Ok(handles)
    }
}

fn join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        if h.join().is_err() {
            tracing::error!("a vCPU thread panicked");
        }
    }
}

/// VmHWM from /proc/self/status.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
