//! The FUSE adapter: converts fuser's arguments, calls one `Fs` method, replies.
//! No logic lives here; failures are logged once, in `fail`.

use super::error::FsError;
use super::journal::SpecialKind;
use super::privs::Writer;
use super::view::Kind;
use super::{Attr, Fs, Owner, SetAttr, BLOCK_SIZE};
use crate::transfer::pool::Pool;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;

/// How long the kernel may cache entries and attributes.
const TTL: Duration = Duration::from_secs(1);

/// Threads that finish closes and fsyncs.
const FINISHERS: usize = 16;

pub struct FuseFs {
    fs: Arc<Fs>,
    /// close and fsync wait for uploads and the journal; they wait on these
    /// threads and reply from there, so the FUSE threads stay free for every
    /// other request (an `ls` while 64 files close). The closing process still
    /// waits for its answer.
    finishers: Pool,
    /// Tells the kernel to drop cached attributes the mount changed on its
    /// own; set once the session exists (see `kernel`).
    kernel: Arc<OnceLock<Notifier>>,
}

impl FuseFs {
    pub fn new(fs: Arc<Fs>) -> FuseFs {
        FuseFs {
            fs,
            finishers: Pool::new("finish", FINISHERS),
            kernel: Arc::new(OnceLock::new()),
        }
    }

    /// Where the mount puts the session's notifier: the session needs this
    /// `FuseFs` before it can give one.
    pub fn kernel(&self) -> Arc<OnceLock<Notifier>> {
        Arc::clone(&self.kernel)
    }

    /// The kernel's cached attributes of `ino` are stale: its next stat asks.
    fn forget_attrs(&self, ino: INodeNo) {
        if let Some(k) = self.kernel.get() {
            // A negative offset: attributes only, the page cache stays.
            if let Err(e) = k.inval_inode(ino, -1, 0) {
                // ENOENT: the kernel holds no such inode, so nothing stale.
                if e.raw_os_error() != Some(libc::ENOENT) {
                    log::warn!("invalidating cached attributes of inode {}: {e}", ino.0);
                }
            }
        }
    }

    /// Replies with an entry; the kernel holds it from now on (until `forget`).
    fn entry(&self, reply: ReplyEntry, op: &str, result: Result<Attr, FsError>) {
        match result {
            Ok(a) => {
                self.fs.remember(a.ino);
                reply.entry(&ttl(&a), &file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(fail(op, &e)),
        }
    }

    /// Runs `job` on a finisher thread and replies with its result.
    fn finish<F>(&self, op: &'static str, reply: ReplyEmpty, job: F)
    where
        F: FnOnce(&Fs) -> Result<(), FsError> + Send + 'static,
    {
        let fs = Arc::clone(&self.fs);
        if self
            .finishers
            .submit(move || done(reply, op, job(&fs)))
            .is_err()
        {
            // Only after destroy; the dropped reply answers EIO.
            log::error!("{op}: the mount is shutting down");
        }
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: match a.kind {
            Kind::Special { rdev, .. } => rdev,
            _ => 0,
        },
        // Tools size their buffers by st_blksize: ask for large writes.
        blksize: MAX_WRITE,
        flags: 0,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Special { special, .. } => match special {
            SpecialKind::Fifo => FileType::NamedPipe,
            SpecialKind::Socket => FileType::Socket,
            SpecialKind::Char => FileType::CharDevice,
            SpecialKind::Block => FileType::BlockDevice,
        },
    }
}

fn ttl(a: &Attr) -> Duration {
    if a.volatile {
        Duration::ZERO
    } else {
        TTL
    }
}

/// Logs a failure at a level fitting its errno, and gives the errno to reply with.
fn fail(op: &str, e: &FsError) -> Errno {
    match e.errno {
        // Expected answers: a name absent, an xattr not set (every write asks
        // for security.capability), a namespace or fallocate mode not kept.
        libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY | libc::ENODATA | libc::EOPNOTSUPP => {
            log::debug!("{op}: {}", e.message)
        }
        libc::EIO => log::error!("{op}: {}", e.message),
        _ => log::warn!("{op}: {}", e.message),
    }
    Errno::from_i32(e.errno)
}

/// Replies to an operation with no result: ok, or its errno (logged by `fail`).
fn done(reply: ReplyEmpty, op: &str, result: Result<(), FsError>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fail(op, &e)),
    }
}

/// getxattr/listxattr's answer: the size alone when asked with size 0, ERANGE
/// when the caller's buffer is too small, else the bytes.
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// The process a request comes from: the owner of what it creates.
fn owner(req: &Request) -> Owner {
    Owner {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn writer(req: &Request) -> Writer {
    Writer {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// FOPEN_DIRECT_IO for a handle opened write-only: its writes then go from
/// the writer's buffer straight into the request, not first into page-cache
/// pages allocated (and, under memory pressure, reclaimed for) in the
/// writer's context. That copy cost `cp` 0.4-1.4 s of CPU per GiB, nearly
/// all of the gap to `cofferfs put` on a busy machine; with it, 0.1 s. Every
/// write is still a synchronous WRITE, so a close (FLUSH) sees all data.
/// Nothing can read or mmap through a write-only descriptor, and readers
/// never reused pages a writer left (a written file's next open drops them).
fn write_only_flags(flags: i32) -> FopenFlags {
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        // Fewer, larger reads; the block cache reads further ahead itself.
        if let Err(max) = config.set_max_readahead(MAX_WRITE) {
            let _ = config.set_max_readahead(max);
        }
        // open(O_TRUNC) arrives as one open, not a truncate to 0 then an open: an
        // overwrite must never show an empty file in between.
        if let Err(e) = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC) {
            log::warn!(
                "kernel lacks atomic O_TRUNC ({e:?}): overwrites pass through an empty file"
            );
        }
        // du, ls -l and find -size stat every entry they read: with READDIRPLUS
        // the listing carries the attributes, not one LOOKUP per entry. AUTO: the
        // kernel asks for them on a directory's first read and after lookups in it.
        if self.fs.wants_readdirplus() {
            let plus = InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
            if let Err(e) = config.add_capabilities(plus) {
                log::info!("kernel lacks READDIRPLUS ({e:?}): each stat after a listing looks up");
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        // Closes in progress finish before the mount's own shutdown.
        self.finishers.shutdown();
        self.fs.shutdown();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        log::trace!("LOOKUP {} {name:?}", parent.0);
        self.entry(reply, "lookup", self.fs.lookup(parent.0, name))
    }

    // BATCH_FORGET comes here too: fuser's default `batch_forget` calls this
    // for each inode (its `ForgetOne` cannot be named outside the crate).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(&[(ino.0, nlookup)]);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&ttl(&a), &file_attr(&a)),
            Err(e) => reply.error(fail("getattr", &e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime: mtime.map(time),
            atime: atime.map(time),
        };
        match self.fs.setattr(ino.0, fh.map(|f| f.0), set) {
            Ok(a) => reply.attr(&ttl(&a), &file_attr(&a)),
            Err(e) => reply.error(fail("setattr", &e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.entry(
            reply,
            "mkdir",
            self.fs.mkdir(parent.0, name, mode & !umask, owner(req)),
        )
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let mode = mode & !(umask & 0o7777);
        self.entry(
            reply,
            "mknod",
            self.fs.mknod(parent.0, name, mode, rdev, owner(req)),
        )
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.entry(
            reply,
            "symlink",
            self.fs.symlink(parent.0, link_name, target, owner(req)),
        )
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(fail("readlink", &e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(reply, "link", self.fs.link(ino.0, newparent.0, newname))
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        done(reply, "unlink", self.fs.unlink(parent.0, name))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        done(reply, "rmdir", self.fs.rmdir(parent.0, name))
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            reply.error(Errno::EINVAL);
            return;
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self
            .fs
            .rename(parent.0, name, newparent.0, newname, noreplace)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rename", &e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // With atomic O_TRUNC the kernel leaves an unprivileged truncate's
        // setuid/setgid to us (it would send the mode with a SETATTR
        // otherwise). Cleared first: a failed open then only loses them.
        if flags.0 & libc::O_TRUNC != 0 && !writer(req).may_keep_privs() {
            match self.fs.kill_suidgid(ino.0, writer(req)) {
                Ok(true) => self.forget_attrs(ino),
                Ok(false) => {}
                Err(e) => return reply.error(fail("open", &e)),
            }
        }
        match self.fs.open(ino.0, flags.0, req.pid()) {
            Ok((fh, keep)) => {
                let f = if keep {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    write_only_flags(flags.0)
                };
                reply.opened(FileHandle(fh), f)
            }
            Err(e) => reply.error(fail("open", &e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .fs
            .create(parent.0, name, mode & !umask, flags, req.pid(), owner(req))
        {
            // A new file is empty and only this mount writes it: the kernel
            // may keep these attributes (its writes invalidate size and
            // times), which spares the GETATTRs of `fstat` and of the first
            // write's privilege check — two of eight requests per small file.
            Ok((a, fh)) => {
                self.fs.remember(a.ino);
                reply.created(
                    &TTL,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    write_only_flags(flags),
                )
            }
            Err(e) => reply.error(fail("create", &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(fail("read", &e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Direct-I/O writes (write-only handles) by a process without
        // CAP_FSETID: the kernel leaves clearing setuid/setgid to us.
        // The kernel caches the mode and does not expect it to change.
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            match self.fs.kill_suidgid(ino.0, writer(req)) {
                Ok(true) => self.forget_attrs(ino),
                Ok(false) => {}
                Err(e) => return reply.error(fail("write", &e)),
            }
        }
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail("write", &e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let pid = req.pid();
        self.finish("close", reply, move |fs| fs.flush(fh.0, pid))
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.finish("fsync", reply, move |fs| fs.fsync(fh.0))
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.finish("release", reply, move |fs| fs.release(fh.0))
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(fail("opendir", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.fs.readdir(fh.0, offset, |e, next| {
            reply.add(INodeNo(e.ino), next, file_type(e.kind), &e.name)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("readdir", &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut given = 0;
        let result = self.fs.readdirplus(fh.0, offset, |e, next, a| {
            let full = reply.add(
                INodeNo(e.ino),
                next,
                &e.name,
                &ttl(a),
                &file_attr(a),
                Generation(0),
            );
            given += usize::from(!full);
            full
        });
        log::trace!("READDIRPLUS {} from {offset}: {given} entries", fh.0);
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("readdirplus", &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.finish("fsyncdir", reply, |fs| fs.sync_metadata())
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name) {
            Ok(v) => xattr_reply(reply, size, &v),
            Err(e) => reply.error(fail("getxattr", &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(v) => xattr_reply(reply, size, &v),
            Err(e) => reply.error(fail("listxattr", &e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        done(
            reply,
            "setxattr",
            self.fs.setxattr(ino.0, name, value, flags),
        )
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        done(reply, "removexattr", self.fs.removexattr(ino.0, name))
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bfree, s.files, s.ffree, BLOCK_SIZE, 255, BLOCK_SIZE,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        done(
            reply,
            "fallocate",
            self.fs.fallocate(ino.0, fh.0, offset, length, mode),
        )
    }
}
