use super::*;
use redb::ReadableTableMetadata;

const C: &str = "t-1";

fn part(disk: &Disk, id: &str, n: u32, data: &[u8]) -> PartRec {
    let mut inc = disk.incoming().unwrap();
    inc.write(data).unwrap();
    disk.commit_part(C, "k", id, n, inc, None).unwrap()
}

fn files(root: &Path, dir: &str) -> usize {
    std::fs::read_dir(root.join(dir)).unwrap().count()
}

#[test]
fn complete_hands_the_part_files_to_the_object_and_a_restart_keeps_them() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Disk::open(tmp.path()).unwrap();
    disk.create_coffer(C, "ap-local").unwrap();
    let id = disk.initiate(C, "k", "text/plain").unwrap();
    let big = vec![1u8; 1 << 20];
    let p1 = part(&disk, &id, 1, &big);
    let p2 = part(&disk, &id, 2, b"tail");
    part(&disk, &id, 3, b"not listed");
    assert_eq!(files(tmp.path(), "parts"), 3);
    let listed = vec![(1, p1.md5.clone()), (2, p2.md5.clone())];
    disk.check_complete(C, "k", &id, &listed).unwrap();
    let rec = disk.complete(C, "k", &id, &listed).unwrap();
    assert_eq!(rec.size, (1 << 20) + 4);
    assert!(rec.file.is_empty());
    assert_eq!(rec.parts.len(), 2);
    assert_eq!(files(tmp.path(), "parts"), 2, "the unlisted part is gone");
    assert!(matches!(
        disk.abort(C, "k", &id),
        Err(DiskError::Code(ErrorCode::NoSuchUpload, _))
    ));
    assert!(matches!(
        disk.check_complete(C, "k", &id, &listed),
        Err(DiskError::Code(ErrorCode::MultipartAlreadyCompleted, _))
    ));
    drop(disk);
    let disk = Disk::open(tmp.path()).unwrap();
    assert_eq!(files(tmp.path(), "parts"), 2, "the sweep keeps live parts");
    let rec = disk.object(C, "k").unwrap().unwrap();
    let pieces = disk.pieces(&rec);
    assert_eq!(pieces.len(), 2);
    assert_eq!(std::fs::read(&pieces[1].0).unwrap(), b"tail");
    assert_eq!(pieces.iter().map(|p| p.1).sum::<u64>(), rec.size);
}

#[test]
fn a_part_replaced_after_the_check_fails_the_complete_and_keeps_the_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Disk::open(tmp.path()).unwrap();
    disk.create_coffer(C, "ap-local").unwrap();
    let id = disk.initiate(C, "k", "").unwrap();
    let p1 = part(&disk, &id, 1, b"first");
    let listed = vec![(1, p1.md5.clone())];
    disk.check_complete(C, "k", &id, &listed).unwrap();
    part(&disk, &id, 1, b"other bytes");
    assert!(matches!(
        disk.complete(C, "k", &id, &listed),
        Err(DiskError::Code(ErrorCode::InvalidPart, _))
    ));
    assert!(disk.object(C, "k").unwrap().is_none());
    assert_eq!(disk.parts(&id).unwrap().len(), 1);
    assert_eq!(files(tmp.path(), "parts"), 1);
    disk.abort(C, "k", &id).unwrap();
    assert_eq!(files(tmp.path(), "parts"), 0);
}

fn put(disk: &Disk, key: &str, data: &[u8]) -> ObjectRec {
    disk.begin_put(C, key).unwrap();
    let mut inc = disk.incoming().unwrap();
    for chunk in data.chunks(10_000) {
        inc.write(chunk).unwrap();
    }
    let rec = disk.commit_put(C, key, inc, "", None).unwrap();
    disk.end_put(C, key);
    rec
}

/// The bytes of an object, as GetObject reads them.
fn bytes_of(disk: &Disk, rec: &ObjectRec) -> Vec<u8> {
    if let Some(b) = disk.inline_bytes(rec).unwrap() {
        return b;
    }
    let pieces = disk.pieces(rec);
    pieces
        .iter()
        .flat_map(|p| std::fs::read(&p.0).unwrap())
        .collect()
}

#[test]
fn listings_and_reads_see_small_puts_waiting_for_the_database_as_stored_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Disk::open(tmp.path()).unwrap();
    disk.create_coffer(C, "ap-local").unwrap();
    // Even keys committed to the database, odd ones still waiting (the
    // flusher commits every 50 ms: stop it to keep them waiting).
    disk.small.stop();
    for i in (0..20).step_by(2) {
        put(&disk, &format!("d/k{i:02}"), format!("v{i}").as_bytes());
    }
    disk.small.flush().unwrap();
    for i in (1..20).step_by(2) {
        put(&disk, &format!("d/k{i:02}"), format!("v{i}").as_bytes());
    }
    put(&disk, "e", b"outside");
    assert!(disk.small.object(&obj_key(C, "d/k01")).is_some());
    assert!(disk.small.object(&obj_key(C, "d/k00")).is_none());
    let mut seen = Vec::new();
    let mut marker = String::new();
    loop {
        let (page, more) = disk.list(C, "d/", &marker, 3).unwrap();
        assert!(page.len() <= 3);
        for (k, rec) in &page {
            let i: usize = k[3..].parse().unwrap();
            assert_eq!(bytes_of(&disk, rec), format!("v{i}").as_bytes());
            seen.push(i);
        }
        if !more {
            break;
        }
        marker = page.last().unwrap().0.clone();
    }
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    // Taken whichever side it is on: a put, a multipart upload.
    for key in ["d/k00", "d/k01"] {
        assert!(matches!(
            disk.initiate(C, key, ""),
            Err(DiskError::Code(ErrorCode::ObjectAlreadyExists, _))
        ));
        disk.begin_put(C, key).unwrap_err();
    }
    drop(disk);
    // What waited is redone from the log at the next open.
    let disk = Disk::open(tmp.path()).unwrap();
    let (page, more) = disk.list(C, "", "", 100).unwrap();
    assert_eq!((page.len(), more), (21, false));
}

#[test]
fn a_small_put_lives_in_the_database_and_a_large_one_in_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Disk::open(tmp.path()).unwrap();
    disk.create_coffer(C, "ap-local").unwrap();
    disk.update_coffer(C, |c| {
        c.lifecycle = Some(r#"{"Rule":[{"Expiration":{"Days":1}}]}"#.into())
    })
    .unwrap();
    let small = vec![7u8; INLINE_MAX as usize];
    let large = vec![9u8; INLINE_MAX as usize + 1];
    let s = put(&disk, "small", &small);
    let l = put(&disk, "large", &large);
    assert!(s.inline && !l.inline);
    assert_eq!(
        s.etag,
        format!("\"{}\"", hex(&crate::protocol::md5(&small)))
    );
    assert_eq!(
        (files(tmp.path(), "data"), files(tmp.path(), "tmp")),
        (1, 0)
    );
    drop(disk);
    let disk = Disk::open(tmp.path()).unwrap();
    let s = disk.object(C, "small").unwrap().unwrap();
    let l = disk.object(C, "large").unwrap().unwrap();
    assert!(
        bytes_of(&disk, &s) == small,
        "the small object after a restart"
    );
    assert!(
        bytes_of(&disk, &l) == large,
        "the large object after a restart"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(disk.expire(1).unwrap(), 2);
    assert_eq!(files(tmp.path(), "data"), 0);
    let tx = disk.db.begin_read().unwrap();
    assert_eq!(
        tx.open_table(INLINE).unwrap().len().unwrap(),
        0,
        "inline bytes expired too"
    );
}

#[test]
fn a_small_put_with_a_wrong_md5_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Disk::open(tmp.path()).unwrap();
    disk.create_coffer(C, "ap-local").unwrap();
    let mut inc = disk.incoming().unwrap();
    inc.write(b"abc").unwrap();
    assert!(matches!(
        disk.commit_put(C, "k", inc, "", Some([0u8; 16])),
        Err(DiskError::Code(ErrorCode::BadDigest, _))
    ));
    assert!(disk.object(C, "k").unwrap().is_none());
}

#[test]
fn expiry_removes_a_multipart_objects_part_files() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Disk::open(tmp.path()).unwrap();
    disk.create_coffer(C, "ap-local").unwrap();
    disk.update_coffer(C, |c| {
        c.lifecycle = Some(r#"{"Rule":[{"Expiration":{"Days":1}}]}"#.into())
    })
    .unwrap();
    let id = disk.initiate(C, "k", "").unwrap();
    let p1 = part(&disk, &id, 1, b"only part");
    disk.complete(C, "k", &id, &[(1, p1.md5)]).unwrap();
    assert_eq!(files(tmp.path(), "parts"), 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(disk.expire(1).unwrap(), 1);
    assert!(disk.object(C, "k").unwrap().is_none());
    assert_eq!(files(tmp.path(), "parts"), 0);
}
