//! Where a mount keeps file contents on local disk: a private directory per
//! coffer under `$XDG_CACHE_HOME/cofferfs` (else `~/.cache/cofferfs`), made
//! 0700, with 0600 files; a directory another user owns or can enter is refused.
//! Real mounts against a real `cofferfs serve`, unmounted on every path.

mod common;

use cofferfs::store::ObjectStore;
use common::{cli, client, is_mounted, random_bytes, sh, Mount, Server, COFFER};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// Unmounts `dir` when dropped, whatever happened.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        if is_mounted(self.0) {
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(self.0)
                .status();
        }
    }
}

#[test]
fn staging_and_blocks_live_in_a_private_directory_per_coffer_under_the_users_cache() {
    let server = Server::start(&[]);
    let data = random_bytes(3 << 20, 11);
    client(&server.endpoint)
        .put("f", data.clone().into())
        .expect("put");
    for xdg in [false, true] {
        let home = tempfile::tempdir().expect("home");
        let h = home.path().to_str().expect("utf-8").to_string();
        let xdg_dir = format!("{h}/xdg");
        let mut env = vec![("HOME", h.as_str())];
        let base = if xdg {
            env.push(("XDG_CACHE_HOME", xdg_dir.as_str()));
            home.path().join("xdg/cofferfs")
        } else {
            home.path().join(".cache/cofferfs")
        };
        let dir = base.join(COFFER);
        let m = Mount::start_env(
            &["--endpoint", &server.endpoint, COFFER],
            &["--cache-dir-size", "64MiB"],
            &env,
        );
        assert_eq!(std::fs::read(m.path("f")).expect("read"), data);
        assert_eq!(mode(&base), 0o700);
        assert_eq!(mode(&dir), 0o700);
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .expect("per-coffer dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            entries.iter().any(|p| p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("cofferfs-staging-"))),
            "{entries:?}"
        );
        for p in &entries {
            assert_eq!(mode(p), 0o700, "{}", p.display());
        }
        let blocks: Vec<_> = std::fs::read_dir(dir.join("cofferfs-blocks"))
            .expect("blocks")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(!blocks.is_empty(), "reading kept blocks on disk");
        for b in &blocks {
            assert_eq!(mode(b), 0o600, "{}", b.display());
            let raw = std::fs::read(b).expect("block");
            assert!(raw.starts_with(b"CFBLK001"), "a header opens every block");
        }
        drop(m);
    }
}

#[test]
fn a_cache_directory_others_can_enter_or_another_user_owns_is_refused() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("tmp");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let _guard = Unmount(&mnt);
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let chown = sh(&format!("chown 65534:65534 {}", common::q(&foreign)), LIMIT);
    assert!(chown.ok, "{}", chown.stderr);
    // A per-coffer directory planted open inside a private base.
    let base = tmp.path().join("base");
    std::fs::create_dir(&base).expect("mkdir");
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::create_dir(base.join(COFFER)).expect("mkdir");
    std::fs::set_permissions(base.join(COFFER), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join(".cache/cofferfs")).expect("mkdir");
    std::fs::set_permissions(
        home.join(".cache/cofferfs"),
        std::fs::Permissions::from_mode(0o775),
    )
    .expect("chmod");

    let foreign_opt = format!("cache_dir={}", foreign.display());
    let cases: [(Vec<&str>, &Path, &str); 5] = [
        (
            vec!["--cache-dir", open.to_str().unwrap()],
            &open,
            "mode 0755",
        ),
        (vec!["--cache-dir", "/tmp"], Path::new("/tmp"), "mode 1777"),
        (vec!["-o", &foreign_opt], &foreign, "owned by uid 65534"),
        (
            vec!["--cache-dir", base.to_str().unwrap()],
            &base,
            "mode 0777",
        ),
        (vec![], &home, "mode 0775"),
    ];
    let home_s = home.to_str().unwrap().to_string();
    for (flags, dir, why) in &cases {
        let mut args = vec![
            "--endpoint",
            &server.endpoint,
            "mount",
            COFFER,
            mnt.to_str().unwrap(),
        ];
        args.extend(flags.iter().copied());
        let out = cli(&args, &[("HOME", &home_s)], LIMIT);
        assert!(!out.ok, "{flags:?}: mounted on {}", dir.display());
        assert!(!is_mounted(&mnt), "{flags:?}");
        assert!(
            out.stderr.contains(why) && out.stderr.contains("cache"),
            "{flags:?}: one clear line: {}",
            out.stderr
        );
    }
    assert_eq!(mode(&open), 0o755, "a refused directory is left as it was");
    assert!(std::fs::read_dir(&open).expect("dir").next().is_none());
}
