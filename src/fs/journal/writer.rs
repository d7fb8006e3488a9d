//! Who this process is, as every batch it stores records it (`Batch::writer`):
//! host name, user, uid and cofferfs release, looked up once. Reads the
//! system's user database and host name; never fails (unknowns stay empty).

use super::format::Writer;
use std::sync::OnceLock;

/// This process as a batch's writer.
pub fn this_process() -> &'static Writer {
    static WRITER: OnceLock<Writer> = OnceLock::new();
    WRITER.get_or_init(|| {
        let uid = rustix::process::geteuid().as_raw();
        Writer {
            host: host_name(),
            user: user_name(uid).unwrap_or_else(|| uid.to_string()),
            uid: Some(uid),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    })
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most
    // that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The login name of `uid`, from the user database.
fn user_name(uid: u32) -> Option<String> {
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwuid_r fills `pwd`
    // with strings inside `buf` and sets `found` to `pwd` or null.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            pwd.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: `found` points at the filled `pwd`, whose `pw_name` is a
    // NUL-terminated string in `buf`, alive here.
    let name = unsafe { std::ffi::CStr::from_ptr((*found).pw_name) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_names_its_host_user_and_release() {
        let w = this_process();
        assert!(!w.host.is_empty());
        assert!(!w.user.is_empty());
        assert_eq!(w.uid, Some(rustix::process::geteuid().as_raw()));
        assert_eq!(w.version, env!("CARGO_PKG_VERSION"));
    }
}
