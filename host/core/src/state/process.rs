//! Whether the process that holds a lock is still there. A PID alone does not say: a holder
//! killed under a parent that never waits (PID 1 in many containers) stays a zombie with its
//! `/proc` entry, and a PID can be reused by an unrelated process. So a holder records its
//! process's start (boot and start time), and a holder is alive only if a process with that PID
//! exists, is not a zombie, and started at that moment of that boot.

use std::path::Path;

/// What this machine can tell about a lock's holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// A running process on this machine, the one that took the lock.
    Alive,
    /// Gone from this machine: no such process, a zombie, or another process under its PID.
    Gone,
    /// On another machine, or on a system without `/proc`: not judged from here.
    Unknown,
}

impl Liveness {
    /// For `engine status`.
    pub fn describe(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Gone => "gone (the next run breaks the lock)",
            Liveness::Unknown => "not checked from this machine",
        }
    }
}

/// A process's identity beyond its PID: the boot it runs in and its start time in clock ticks
/// since that boot, as `BOOT_ID/TICKS`. `None` where `/proc` does not tell.
pub fn start_identity(pid: u32) -> Option<String> {
    let stat = read_stat(Path::new("/proc").join(pid.to_string()).as_path())?;
    Some(format!("{}/{}", boot_id()?, stat.start_ticks))
}

/// Whether the process `pid` of this machine is the one whose [`start_identity`] was
/// `recorded` (`None` for a holder that recorded none, as engines before schema 2 did: then
/// only its existence and state count).
pub fn liveness_here(pid: u32, recorded: Option<&str>) -> Liveness {
    if !Path::new("/proc/self/stat").exists() {
        return Liveness::Unknown;
    }
    let Some(stat) = read_stat(Path::new("/proc").join(pid.to_string()).as_path()) else {
        return Liveness::Gone;
    };
    if stat.zombie {
        return Liveness::Gone;
    }
    match (recorded, boot_id()) {
        (Some(recorded), Some(boot)) if recorded != format!("{boot}/{}", stat.start_ticks) => {
            Liveness::Gone
        }
        _ => Liveness::Alive,
    }
}

/// The fields of `/proc/PID/stat` that matter here.
struct Stat {
    zombie: bool,
    start_ticks: u64,
}

fn read_stat(dir: &Path) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)
}

/// Parses `PID (COMM) STATE PPID … STARTTIME …`. COMM may hold spaces and parentheses, so the
/// fields are counted from its last `)`; STATE is field 3 and STARTTIME field 22 of proc(5).
fn parse_stat(text: &str) -> Option<Stat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let state = *fields.first()?;
    Some(Stat {
        zombie: state == "Z" || state == "X",
        start_ticks: fields.get(22 - 3)?.parse().ok()?,
    })
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_past_a_command_with_spaces_and_parentheses() {
        let line =
            "4242 (a (b) c) Z 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1 2 3";
        let stat = parse_stat(line).unwrap();
        assert!(stat.zombie);
        assert_eq!(stat.start_ticks, 987654);
        assert!(parse_stat("4242 (truncated) S 1").is_none());
        assert!(parse_stat("no parenthesis").is_none());
    }

    #[test]
    fn this_process_is_alive_and_another_start_is_not_it() {
        let me = std::process::id();
        let identity = start_identity(me).expect("Linux has /proc");
        assert_eq!(liveness_here(me, Some(&identity)), Liveness::Alive);
        assert_eq!(liveness_here(me, None), Liveness::Alive);
        assert_eq!(liveness_here(me, Some("other-boot/1")), Liveness::Gone);
        assert_eq!(liveness_here(4_000_000, None), Liveness::Gone);
    }
}
