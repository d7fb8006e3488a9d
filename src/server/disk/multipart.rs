//! The server's multipart uploads on disk: initiate, parts, complete, abort.
//! A part is a file under `parts/`, fsync'd before its answer; Complete hands
//! the part files to the object in one transaction, copying nothing.

use super::*;

impl Disk {
    pub fn initiate(
        &self,
        coffer: &str,
        key: &str,
        content_type: &str,
    ) -> Result<String, DiskError> {
        let id = random_id();
        let tx = io!(self.db.begin_write())?;
        let _held = self.check_free(coffer, key, &tx)?;
        {
            let mut t = io!(tx.open_table(UPLOADS))?;
            for item in io!(t.iter())? {
                let (_, v) = io!(item)?;
                let u: UploadRec = from_json(v.value())?;
                if u.coffer == coffer && u.key == key {
                    return Err(DiskError::code(ErrorCode::ObjectAlreadyUploading, key));
                }
            }
            if self
                .putting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&obj_key(coffer, key))
            {
                return Err(DiskError::code(ErrorCode::ObjectAlreadyUploading, key));
            }
            let rec = UploadRec {
                coffer: coffer.to_string(),
                key: key.to_string(),
                initiated: now(),
                content_type: content_type.to_string(),
            };
            io!(t.insert(id.as_str(), to_json(&rec)?.as_slice()))?;
        }
        io!(tx.commit())?;
        Ok(id)
    }

    /// The open upload `id` of `coffer/key`, or NoSuchUpload.
    pub fn upload(&self, coffer: &str, key: &str, id: &str) -> Result<UploadRec, DiskError> {
        let tx = io!(self.db.begin_read())?;
        let t = io!(tx.open_table(UPLOADS))?;
        match io!(t.get(id))? {
            Some(v) => {
                let u: UploadRec = from_json(v.value())?;
                if u.coffer == coffer && u.key == key {
                    return Ok(u);
                }
                Err(DiskError::code(ErrorCode::NoSuchUpload, id))
            }
            None => Err(DiskError::code(ErrorCode::NoSuchUpload, id)),
        }
    }

    /// Whether `id` completed into an object that still exists.
    pub fn completed(&self, coffer: &str, key: &str, id: &str) -> Result<bool, DiskError> {
        let done = {
            let tx = io!(self.db.begin_read())?;
            let t = io!(tx.open_table(COMPLETED))?;
            let r = io!(t.get(id))?.map(|v| v.value().to_string());
            r
        };
        Ok(done.as_deref() == Some(obj_key(coffer, key).as_str())
            && self.object(coffer, key)?.is_some())
    }

    pub fn uploads(&self, coffer: &str) -> Result<Vec<(String, UploadRec)>, DiskError> {
        let tx = io!(self.db.begin_read())?;
        let t = io!(tx.open_table(UPLOADS))?;
        let mut out = Vec::new();
        for item in io!(t.iter())? {
            let (k, v) = io!(item)?;
            let u: UploadRec = from_json(v.value())?;
            if u.coffer == coffer {
                out.push((k.value().to_string(), u));
            }
        }
        out.sort_by(|a, b| a.1.key.cmp(&b.1.key));
        Ok(out)
    }

    pub fn commit_part(
        &self,
        coffer: &str,
        key: &str,
        id: &str,
        n: u32,
        inc: Incoming,
        expect_md5: Option<[u8; 16]>,
    ) -> Result<PartRec, DiskError> {
        let size = inc.size;
        let (file, digest) = inc.finish(&self.root.join("parts"))?;
        let remove = |f: &str| {
            let _ = std::fs::remove_file(self.root.join("parts").join(f));
        };
        if expect_md5.is_some_and(|m| m != digest) {
            remove(&file);
            return Err(DiskError::code(
                ErrorCode::BadDigest,
                "Content-MD5 mismatch",
            ));
        }
        let rec = PartRec {
            size,
            md5: hex(&digest),
            file: file.clone(),
            mtime: now(),
        };
        let old = (|| {
            self.upload(coffer, key, id)?;
            let tx = io!(self.db.begin_write())?;
            let old = {
                let mut t = io!(tx.open_table(PARTS))?;
                let old = io!(t.insert(part_key(id, n).as_str(), to_json(&rec)?.as_slice()))?
                    .map(|v| from_json::<PartRec>(v.value()));
                old
            };
            // Re-check inside the transaction: an Abort may have raced this part.
            {
                let t = io!(tx.open_table(UPLOADS))?;
                if io!(t.get(id))?.is_none() {
                    return Err(DiskError::code(ErrorCode::NoSuchUpload, id));
                }
            }
            io!(tx.commit())?;
            old.transpose()
        })();
        match old {
            Ok(Some(prev)) => remove(&prev.file),
            Ok(None) => {}
            Err(e) => {
                remove(&file);
                return Err(e);
            }
        }
        Ok(rec)
    }

    pub fn parts(&self, id: &str) -> Result<Vec<(u32, PartRec)>, DiskError> {
        let tx = io!(self.db.begin_read())?;
        let t = io!(tx.open_table(PARTS))?;
        parts_in(&t, id)
    }

    /// Validates a Complete request against the parts stored now (before the
    /// `200`, so rule violations get their own status codes).
    pub fn check_complete(
        &self,
        coffer: &str,
        key: &str,
        id: &str,
        listed: &[(u32, String)],
    ) -> Result<(), DiskError> {
        if self.upload(coffer, key, id).is_err() {
            if self.completed(coffer, key, id)? {
                return Err(DiskError::code(ErrorCode::MultipartAlreadyCompleted, id));
            }
            return Err(DiskError::code(ErrorCode::NoSuchUpload, id));
        }
        select_parts(listed, self.parts(id)?).map(|_| ())
    }

    /// Marks `id` completing; AlreadyLock when another Complete holds it.
    pub fn lock_complete(&self, id: &str) -> Result<(), DiskError> {
        if !self
            .completing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string())
        {
            return Err(DiskError::code(ErrorCode::AlreadyLock, id));
        }
        Ok(())
    }

    pub fn unlock_complete(&self, id: &str) {
        self.completing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Makes the listed parts the object, in one transaction and without copying
    /// a byte: the object record takes over the part files, which UploadPart
    /// fsync'd before answering. The upload and the parts are re-read inside the
    /// transaction, so a racing UploadPart or Abort either lands before (and is
    /// seen) or fails after. A crash before the commit leaves the upload as it
    /// was; after it, the object whole.
    pub fn complete(
        &self,
        coffer: &str,
        key: &str,
        id: &str,
        listed: &[(u32, String)],
    ) -> Result<ObjectRec, DiskError> {
        let tx = io!(self.db.begin_write())?;
        let (rec, unused, held) = {
            let mut uploads = io!(tx.open_table(UPLOADS))?;
            let up = take_upload(&mut uploads, coffer, key, id)?;
            // Held to the commit: no small put takes the key meanwhile.
            let held = self.check_free(coffer, key, &tx)?;
            let mut objects = io!(tx.open_table(OBJECTS))?;
            let okey = obj_key(coffer, key);
            let mut parts = io!(tx.open_table(PARTS))?;
            let stored = parts_in(&parts, id)?;
            for (n, _) in &stored {
                io!(parts.remove(part_key(id, *n).as_str()))?;
            }
            let (chosen, unused) = select_parts(listed, stored)?;
            let digests: Vec<[u8; 16]> = chosen.iter().map(|p| unhex16(&p.md5)).collect();
            let rec = ObjectRec {
                size: chosen.iter().map(|p| p.size).sum(),
                etag: multipart_etag(&digests),
                mtime: now(),
                content_type: up.content_type,
                file: String::new(),
                inline: false,
                parts: chosen
                    .into_iter()
                    .map(|p| Piece {
                        file: p.file,
                        size: p.size,
                    })
                    .collect(),
            };
            io!(objects.insert(okey.as_str(), to_json(&rec)?.as_slice()))?;
            let mut c = io!(tx.open_table(COMPLETED))?;
            io!(c.insert(id, okey.as_str()))?;
            (rec, unused, held)
        };
        io!(tx.commit())?;
        drop(held);
        // Parts uploaded but not listed belong to nothing now.
        for p in unused {
            let _ = std::fs::remove_file(self.root.join("parts").join(p.file));
        }
        Ok(rec)
    }

    pub fn abort(&self, coffer: &str, key: &str, id: &str) -> Result<(), DiskError> {
        // One transaction: a Complete that committed first owns the part files,
        // and then this finds no upload and removes nothing.
        let tx = io!(self.db.begin_write())?;
        let stored = {
            let mut uploads = io!(tx.open_table(UPLOADS))?;
            take_upload(&mut uploads, coffer, key, id)?;
            let mut parts = io!(tx.open_table(PARTS))?;
            let stored = parts_in(&parts, id)?;
            for (n, _) in &stored {
                io!(parts.remove(part_key(id, *n).as_str()))?;
            }
            stored
        };
        io!(tx.commit())?;
        for (_, p) in stored {
            let _ = std::fs::remove_file(self.root.join("parts").join(p.file));
        }
        Ok(())
    }
}

fn take_upload(
    uploads: &mut redb::Table<&str, &[u8]>,
    coffer: &str,
    key: &str,
    id: &str,
) -> Result<UploadRec, DiskError> {
    let up: UploadRec = match io!(uploads.get(id))? {
        Some(v) => from_json(v.value())?,
        None => return Err(DiskError::code(ErrorCode::NoSuchUpload, id)),
    };
    if up.coffer != coffer || up.key != key {
        return Err(DiskError::code(ErrorCode::NoSuchUpload, id));
    }
    io!(uploads.remove(id))?;
    Ok(up)
}

fn parts_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Vec<(u32, PartRec)>, DiskError> {
    let start = format!("{id}/");
    let mut out = Vec::new();
    for item in io!(t.range(start.as_str()..))? {
        let (k, v) = io!(item)?;
        let Some(n) = k.value().strip_prefix(&start) else {
            break;
        };
        let n = n
            .parse()
            .map_err(|_| DiskError::Io(format!("bad part key {:?}", k.value())))?;
        out.push((n, from_json(v.value())?));
    }
    Ok(out)
}

/// Checks a Complete's list against the stored parts (each listed part stored
/// with that MD5, plus the numbering and size rules); returns the listed parts
/// in order, and the stored ones the list leaves out.
fn select_parts(
    listed: &[(u32, String)],
    stored: Vec<(u32, PartRec)>,
) -> Result<(Vec<PartRec>, Vec<PartRec>), DiskError> {
    let mut stored: std::collections::HashMap<u32, PartRec> = stored.into_iter().collect();
    let sizes: Vec<(u32, Option<u64>)> = listed
        .iter()
        .map(|(n, etag)| {
            let p = stored.get(n).filter(|p| p.md5.eq_ignore_ascii_case(etag));
            (*n, p.map(|p| p.size))
        })
        .collect();
    rules::check_complete(&sizes).map_err(|c| DiskError::code(c, "parts do not form an object"))?;
    let chosen = listed
        .iter()
        .filter_map(|(n, _)| stored.remove(n))
        .collect();
    Ok((chosen, stored.into_values().collect()))
}
