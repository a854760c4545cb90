//! Choosing what the cores run on: the CPUs and the io driver.

use super::{IoDriver, StartError};
use crate::config::{CoreSelection, IoMode};

/// The CPUs to run on: the process's allowed set (sched_getaffinity, so
/// taskset and systemd's CPUAffinity= are honoured), or a subset of it.
pub fn select_cpus(sel: &CoreSelection) -> Result<Vec<usize>, StartError> {
    let allowed: Vec<usize> = core_affinity::get_core_ids()
        .ok_or_else(|| StartError("cannot read the allowed CPU set".into()))?
        .into_iter()
        .map(|c| c.id)
        .collect();
    match sel {
        CoreSelection::All => Ok(allowed),
        CoreSelection::Count(n) => {
            if *n > allowed.len() {
                return Err(StartError(format!(
                    "--cores {n}: only {} CPUs are allowed ({allowed:?})",
                    allowed.len()
                )));
            }
            Ok(allowed[..*n].to_vec())
        }
        CoreSelection::List(list) => {
            if let Some(bad) = list.iter().find(|c| !allowed.contains(c)) {
                return Err(StartError(format!(
                    "--cores: CPU {bad} is not in the allowed set {allowed:?}"
                )));
            }
            Ok(list.clone())
        }
    }
}

/// Picks the io driver, with a sentence saying why.
pub(super) fn choose_driver(mode: IoMode) -> Result<(IoDriver, String), StartError> {
    match mode {
        IoMode::Epoll => Ok((IoDriver::Epoll, "epoll (as configured)".into())),
        IoMode::Uring => match probe_uring() {
            Ok(()) => Ok((IoDriver::Uring, "io_uring (as configured)".into())),
            Err(why) => Err(StartError(format!(
                "--io uring: io_uring is not available here: {why}. \
                 Use --io auto to fall back to epoll."
            ))),
        },
        IoMode::Auto => match probe_uring() {
            Ok(()) => Ok((IoDriver::Uring, "io_uring".into())),
            Err(why) => Ok((
                IoDriver::Epoll,
                format!("epoll (fallback: io_uring is not available: {why})"),
            )),
        },
    }
}

/// Checks that this process may create a ring and that the kernel has the
/// operations monoio uses; says why not otherwise.
fn probe_uring() -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Err("kernel.io_uring_disabled = 2".into());
        }
    }
    match io_uring::IoUring::new(2) {
        Ok(_) => {}
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOSYS) => "io_uring_setup is not implemented or is filtered \
                                       (old kernel, or a seccomp profile such as Docker's)"
                    .into(),
                Some(libc::EPERM) => {
                    "io_uring_setup was denied (EPERM: kernel.io_uring_disabled or a \
                     security policy)"
                        .into()
                }
                _ => format!("io_uring_setup failed: {e}"),
            })
        }
    }
    if !monoio::utils::detect_uring() {
        return Err("the kernel lacks io_uring operations that monoio needs".into());
    }
    Ok(())
}
