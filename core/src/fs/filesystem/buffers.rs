//! The write path: each file's buffer block, the memory budget across all buffers, sealing, packing small files
//! into shared blocks, the upload pool and what becomes of a failed upload (kept, reported at the owner's next
//! `fsync`), and `fsync` itself.

use super::*;

impl Filesystem {
    /// Bytes held in buffers (not yet stored), and uploads in flight.
    pub fn buffered(&self) -> (u64, usize) {
        let st = self.lock();
        (st.memory, st.uploading)
    }

    /// Where the mount's buffered bytes are on their way to the store.
    pub fn upload_stats(&self) -> UploadStats {
        let st = self.lock();
        let mut s = UploadStats { held_bytes: st.memory, uploaded_bytes: st.uploaded_bytes, ..UploadStats::default() };
        for b in st.buffers.values() {
            match &b.data {
                BufData::Open(v) if !v.is_empty() => s.open_buffers += 1,
                BufData::Sealed { uploading: true, .. } => s.queued += 1,
                BufData::Sealed { error: Some(e), .. } => {
                    s.failed += 1;
                    s.last_error = Some(e.to_string());
                }
                BufData::Sealed { .. } => s.queued += 1,
                _ => {}
            }
        }
        // An upload task holds a slot while it hashes and stores; the others wait for one.
        let busy = self.shared.opts.max_uploads.saturating_sub(self.shared.slots.available_permits());
        s.in_flight = busy.min(s.queued);
        s.queued -= s.in_flight;
        s
    }

    /// Uploads everything buffered and waits for it: what `fsctl flush --wait` asks for. Fails with the store's
    /// error if an upload fails after its retries (the data stays held).
    pub fn flush_all(&self) -> Result<(), FsError> {
        let st = self.lock();
        let all = st.buffers.keys().copied().collect();
        self.flush(st, all)
    }

    /// Bytes of memory the open buffers have reserved (their capacity, which can exceed what they hold).
    pub fn reserved(&self) -> u64 {
        let st = self.lock();
        st.buffers.values().map(|b| if let BufData::Open(v) = &b.data { v.capacity() as u64 } else { 0 }).sum()
    }

    /// Writes `data` at `offset`. Returns once the bytes are in the file's buffer (not yet durable: see
    /// [`Filesystem::fsync`]); waits while buffers are over the memory budget.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize, FsError> {
        let mut st = self.lock();
        st.table.get(ino)?.body.file()?;
        offset.checked_add(data.len() as u64).ok_or(FsError::Invalid("write past the largest file offset"))?;
        self.buffer_bytes(&mut st, ino, offset, data)?;
        if self.shared.journal.get().is_some() && st.unsynced.insert(ino) {
            self.shared.log(&st.table, |table| Some(Record::Unsynced { path: table.path(ino)? }));
        }
        let t = now();
        let i = st.table.get_mut(ino)?;
        i.meta.mtime = t;
        i.meta.ctime = t;
        st.generation += 1;
        drop(self.within_budget(st));
        Ok(data.len())
    }

    /// Copies `data` into the file's buffer(s) and points its extents at them (a file's bytes, not its times).
    pub(super) fn buffer_bytes(&self, st: &mut State, ino: Ino, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let mut done = 0;
        while done < data.len() {
            let id = match st.open_buffer.get(&ino) {
                Some(&id) => id,
                None => {
                    let id = BufId(st.next_buf);
                    st.next_buf += 1;
                    // A large first write looks like streaming: take the whole buffer at once instead of growing
                    // it by copies. A small one gets exactly its size, so many small files cost what they hold.
                    let first = data.len() - done;
                    let v = if first >= 128 << 10 {
                        st.spare.take().unwrap_or_else(|| crate::bigbuf::with_capacity(self.shared.opts.buffer_size))
                    } else {
                        Vec::with_capacity(first)
                    };
                    st.add_buffer(id, Buffer { owner: ino, data: BufData::Open(v), members: Vec::new() });
                    st.open_buffer.insert(ino, id);
                    id
                }
            };
            let room = self.shared.opts.buffer_size - st.buffers[&id].len();
            if room == 0 {
                if !Self::compact(st, id) {
                    self.seal(st, id);
                }
                continue;
            }
            let State { buffers, table, memory, .. } = st;
            let buf = buffers.get_mut(&id).expect("open buffers exist");
            let BufData::Open(v) = &mut buf.data else { unreachable!("open_buffer names an open buffer") };
            let n = room.min(data.len() - done);
            let at = v.len() as u64;
            v.extend_from_slice(&data[done..done + n]);
            *memory += n as u64;
            let Body::File(x) = &mut table.get_mut(ino)?.body else { unreachable!("checked above") };
            x.write(offset + done as u64, n as u64, Source::Buffer { id, offset: at });
            done += n;
        }
        Ok(())
    }

    /// Back-pressure: past the budget, waits for uploads to free memory.
    pub(super) fn within_budget<'a>(&self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        while st.memory + st.spare.as_ref().map_or(0, |v| v.capacity() as u64) > self.shared.opts.memory_budget {
            if st.spare.take().is_some() {
                continue;
            }
            if st.uploading == 0 {
                let largest =
                    st.open_buffer.values().copied().max_by_key(|id| st.buffers.get(id).map_or(0, Buffer::len));
                match largest {
                    Some(id) => {
                        if !Self::compact(&mut st, id) {
                            self.seal(&mut st, id)
                        }
                    }
                    // Everything is sealed and nothing uploads: failed uploads hold the memory.
                    None => break,
                }
            }
            st = self.wait(st);
        }
        st
    }

    /// Drops the bytes of an open buffer that its file no longer reads (overwritten or truncated away), when
    /// they are at least half of it, by moving the live bytes down. Returns whether it did; the buffer then has
    /// room again. A file rewritten in place (a database, `fsx`) thus never stores its garbage.
    pub(super) fn compact(st: &mut State, id: BufId) -> bool {
        let State { buffers, table, memory, .. } = st;
        let Some(buf) = buffers.get_mut(&id) else { return false };
        let BufData::Open(v) = &mut buf.data else { return false };
        let Ok(inode) = table.get_mut(buf.owner) else { return false };
        let Body::File(x) = &mut inode.body else { return false };
        let live = x.buffer_ranges(id);
        let live_bytes: u64 = live.iter().map(|r| r.1).sum();
        if v.is_empty() || live_bytes * 2 > v.len() as u64 {
            return false;
        }
        // (old offset, new offset) of each live range, in buffer order: ranges only move down.
        let mut moves = Vec::with_capacity(live.len());
        let mut at = 0u64;
        for &(off, len) in &live {
            v.copy_within(off as usize..(off + len) as usize, at as usize);
            moves.push((off, at));
            at += len;
        }
        *memory -= v.len() as u64 - at;
        v.truncate(at as usize);
        x.remap_buffer(id, |o| {
            let i = moves.partition_point(|&(off, _)| off <= o) - 1;
            let (off, new) = moves[i];
            new + (o - off)
        });
        true
    }

    pub(super) fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let (st, _) =
            self.shared.uploaded.wait_timeout(st, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner());
        st
    }

    /// Seals buffer `id` (if open) and starts its upload.
    pub(super) fn seal(&self, st: &mut State, id: BufId) {
        let Some(buf) = st.buffers.get_mut(&id) else { return };
        if let BufData::Open(v) = &mut buf.data {
            let data = Bytes::from(std::mem::take(v));
            buf.data = BufData::Sealed { data, uploading: false, error: None };
            st.open_buffer.remove(&buf.owner);
        }
        self.start_upload(st, id);
    }

    pub(super) fn start_upload(&self, st: &mut State, id: BufId) {
        let Some(Buffer { data: BufData::Sealed { data, uploading, error }, .. }) = st.buffers.get_mut(&id) else {
            return;
        };
        if *uploading {
            return;
        }
        *uploading = true;
        *error = None;
        st.uploading += 1;
        let data = data.clone();
        let shared = self.shared.clone();
        self.shared.rt.spawn(async move {
            let result = upload(&shared, data).await;
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            st.uploading -= 1;
            match result {
                Ok(locator) => {
                    st.uploaded_bytes += locator.size();
                    if let Some(buf) = st.remove_buffer(id) {
                        st.memory -= buf.len() as u64;
                        let Buffer { owner: buf_owner, data, members } = buf;
                        if let BufData::Sealed { data, .. } = data {
                            shared.keep_spare(&mut st, data);
                        }
                        // A plain buffer is its own block; a pack holds each member at its offset.
                        let moves: Vec<(BufId, u64)> = if buf_owner == PACK {
                            members
                                .iter()
                                .filter_map(|m| match st.buffers.get(m).map(|b| &b.data) {
                                    Some(BufData::InPack { at, .. }) => Some((*m, *at)),
                                    _ => None,
                                })
                                .collect()
                        } else {
                            vec![(id, 0)]
                        };
                        for (member, at) in moves {
                            let owner = if member == id {
                                buf_owner
                            } else {
                                let Some(m) = st.remove_buffer(member) else { continue };
                                st.memory -= m.len() as u64;
                                m.owner
                            };
                            if let Ok(i) = st.table.get_mut(owner)
                                && let Body::File(x) = &mut i.body
                            {
                                let changed = x.buffer_stored_at(member, &locator, at);
                                let mtime_ns = to_ns(i.meta.mtime);
                                shared.log(&st.table, |table| {
                                    let ranges = changed
                                        .into_iter()
                                        .map(|(at, len, offset)| StoredRange {
                                            at,
                                            len,
                                            locator: locator.to_string(),
                                            offset,
                                        })
                                        .collect::<Vec<_>>();
                                    if ranges.is_empty() {
                                        return None;
                                    }
                                    Some(Record::Stored { path: table.path(owner)?, ranges, mtime_ns })
                                });
                            }
                            if !st.holds_unstored(owner) && st.unsynced.remove(&owner) {
                                shared.log(&st.table, |table| Some(Record::Synced { path: table.path(owner)? }));
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "upload failed; the data stays in memory for a later retry");
                    if let Some(Buffer { data: BufData::Sealed { uploading, error, .. }, .. }) = st.buffers.get_mut(&id)
                    {
                        *uploading = false;
                        *error = Some(SharedError::new(e));
                    }
                }
            }
            shared.uploaded.notify_all();
        });
    }

    /// The error of a failed upload of this file's bytes, if any (they are still held; `fsync` retries). What
    /// `write` and `close` report, so that a store failure reaches the writer.
    pub fn upload_error(&self, ino: Ino) -> Result<(), FsError> {
        let st = self.lock();
        for b in st.owned_by(ino).iter().filter_map(|id| st.buffers.get(id)) {
            let sealed = match &b.data {
                BufData::InPack { pack, .. } => st.buffers.get(pack).map(|p| &p.data),
                data => Some(data),
            };
            if let Some(BufData::Sealed { error: Some(e), .. }) = sealed {
                return Err(FsError::Store(e.clone()));
            }
        }
        Ok(())
    }

    /// What `close` of a writer reports: writes lost with a cafsd that died (once, and only to a handle opened
    /// before the restart: `stale`; see [`Filesystem::fsync_handle`]), or a failed upload of this file's bytes.
    pub fn close_error(&self, ino: Ino, stale: bool) -> Result<(), FsError> {
        if stale {
            self.take_lost(&mut self.lock(), ino)?;
        }
        self.upload_error(ino)
    }

    /// Reports, once, that a recovery found this file holding bytes only in the memory of the cafsd that died:
    /// writes that cafsd acknowledged may be missing. Once reported, the journal says the file is whole as it
    /// stands (so a later recovery does not report it again); until then a recovery reports it again.
    pub(super) fn take_lost(&self, st: &mut State, ino: Ino) -> Result<(), FsError> {
        if st.lost.remove(&ino) {
            // (Written to since: its own `Synced` comes when those bytes land.)
            if !st.unsynced.contains(&ino) {
                self.shared.log(&st.table, |table| Some(Record::Synced { path: table.path(ino)? }));
            }
            return Err(FsError::WritesLost);
        }
        Ok(())
    }

    /// Makes the file's bytes durable in the block store: seals its buffer, (re)starts its uploads and waits for
    /// them. Fails with the store's error if an upload fails after retries; the data stays held.
    pub fn fsync(&self, ino: Ino) -> Result<(), FsError> {
        self.fsync_handle(ino, false)
    }

    /// [`Filesystem::fsync`] through a file handle; `stale` when the handle was opened before cafsd restarted.
    /// After a recovery, the first `fsync` (or `close`) through such a handle of a file whose unstored writes
    /// died with the old cafsd fails with `EIO`: a resent `fsync` must not claim bytes that are gone. A handle
    /// opened since never held those writes and is not told; its successful `fsync` makes the journal say the
    /// file is whole as it stands.
    pub fn fsync_handle(&self, ino: Ino, stale: bool) -> Result<(), FsError> {
        let mut st = self.lock();
        st.table.get(ino)?;
        let lost = if stale { self.take_lost(&mut st, ino) } else { Ok(()) };
        let mine = st.owned_by(ino).to_vec();
        self.flush(st, mine)?;
        lost?;
        let st = self.lock();
        if st.lost.contains(&ino) && !st.unsynced.contains(&ino) {
            self.shared.log(&st.table, |table| Some(Record::Synced { path: table.path(ino)? }));
        }
        drop(st);
        // The landing of each upload was journaled when it landed: now make that (and all before it) durable.
        self.sync_journal()
    }

    /// Packs small open buffers into shared buffers of up to `buffer_size`, and starts their uploads. Returns
    /// the packs.
    pub(super) fn pack(&self, st: &mut State, small: Vec<BufId>) -> Vec<BufId> {
        let mut packs = Vec::new();
        let mut group: Vec<BufId> = Vec::new();
        let mut size = 0;
        let mut flush_group = |st: &mut State, group: &mut Vec<BufId>| {
            if group.is_empty() {
                return;
            }
            let pack_id = BufId(st.next_buf);
            st.next_buf += 1;
            let mut data = Vec::with_capacity(group.iter().map(|id| st.buffers[id].len()).sum());
            for id in group.iter() {
                let b = st.buffers.get_mut(id).expect("picked from the map");
                let BufData::Open(v) = std::mem::replace(&mut b.data, BufData::Open(Vec::new())) else {
                    unreachable!("only open buffers are packed")
                };
                let at = data.len() as u64;
                data.extend_from_slice(&v);
                b.data = BufData::InPack { data: Bytes::from(v), pack: pack_id, at };
                let owner = b.owner;
                st.open_buffer.remove(&owner);
            }
            st.memory += data.len() as u64;
            let members = std::mem::take(group);
            st.add_buffer(
                pack_id,
                Buffer {
                    owner: PACK,
                    data: BufData::Sealed { data: Bytes::from(data), uploading: false, error: None },
                    members,
                },
            );
            self.start_upload(st, pack_id);
            packs.push(pack_id);
        };
        for id in small {
            let len = st.buffers[&id].len();
            if size + len > self.shared.opts.buffer_size {
                flush_group(st, &mut group);
                size = 0;
            }
            group.push(id);
            size += len;
        }
        flush_group(st, &mut group);
        packs
    }

    /// Seals and uploads the buffers `picked` (packing the small ones together), and waits for them.
    pub(super) fn flush(&self, mut st: MutexGuard<'_, State>, picked: Vec<BufId>) -> Result<(), FsError> {
        let mut ids = Vec::new();
        let mut small = Vec::new();
        for id in picked {
            match &st.buffers[&id].data {
                BufData::Open(v) if v.is_empty() => {}
                BufData::Open(v) if v.len() < PACK_BELOW => small.push(id),
                BufData::InPack { pack, .. } => ids.push(*pack),
                _ => ids.push(id),
            }
        }
        small.sort();
        ids.sort();
        ids.dedup();
        // Uploads already in flight were started before this call, perhaps while the store was failing: one of
        // them that fails gets a fresh attempt here rather than making this call report an old failure.
        let mut inherited: Vec<BufId> = ids
            .iter()
            .copied()
            .filter(|id| matches!(st.buffers.get(id).map(|b| &b.data), Some(BufData::Sealed { uploading: true, .. })))
            .collect();
        for &id in &ids {
            self.seal(&mut st, id);
        }
        let packs = self.pack(&mut st, small);
        ids.extend(packs);
        loop {
            let mut pending = false;
            let mut failed = None;
            for id in &ids {
                match st.buffers.get(id).map(|b| &b.data) {
                    Some(BufData::Sealed { uploading: true, .. }) => pending = true,
                    Some(BufData::Sealed { error: Some(e), .. }) => {
                        if let Some(i) = inherited.iter().position(|x| x == id) {
                            inherited.swap_remove(i);
                            self.start_upload(&mut st, *id);
                            pending = true;
                        } else {
                            failed.get_or_insert_with(|| e.clone());
                        }
                    }
                    _ => {}
                }
            }
            if !pending {
                return failed.map_or(Ok(()), |e| Err(FsError::Store(e)));
            }
            st = self.wait(st);
        }
    }
}

/// Hashes and stores one sealed buffer, with retries.
async fn upload(shared: &Shared, data: Bytes) -> Result<Locator, StoreError> {
    let _slot = shared.slots.acquire().await.map_err(|_| StoreError::Unavailable("shutting down".into()))?;
    let block = tokio::task::spawn_blocking(move || Block::new(data))
        .await
        .map_err(|e| StoreError::Unavailable(format!("hashing task failed: {e}")))??;
    put_with_retry(shared, &block).await?;
    Ok(block.locator().clone())
}

/// A retry's wait: `delay` less up to half of it at random, so that many uploads failing together (a store
/// that went down) do not come back at the same instant.
pub(super) fn jittered(delay: Duration) -> Duration {
    delay.saturating_sub(delay.mul_f64(fastrand::f64() / 2.0))
}

/// Puts a block, retrying errors that may go away with exponential backoff and jitter.
pub(super) async fn put_with_retry(shared: &Shared, block: &Block) -> Result<(), StoreError> {
    let mut delay = shared.opts.retry_delay;
    let mut attempt = 1;
    loop {
        let limit = shared.opts.upload_timeout;
        let attempt_result = match tokio::time::timeout(limit, shared.store.put(block)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!("the upload took over {} s", limit.as_secs_f64()))),
        };
        match attempt_result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && attempt < shared.opts.upload_attempts => {
                tracing::info!(attempt, error = %e, "upload failed; retrying");
                tokio::time::sleep(jittered(delay)).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
