//! The in-memory backend, for tests: the same record format as on disk, kept in a map.
//! "Durable" means "in this process's memory".

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::ids::ShopId;
use crate::log::record::{self, Envelope, Hash};

use super::chunks::{self, Head, ShopLog};
use super::{AppendBatch, EventStore, RejectionRecord, StoreError, VerifyReport};

/// Shop logs in memory.
#[derive(Default)]
pub struct MemoryStore {
    shops: Mutex<BTreeMap<ShopId, Arc<Shop>>>,
    /// Events returned by `read_from`, over all shops: what a test counts to see that a
    /// reader took something from memory instead of reading it back.
    events_read: std::sync::atomic::AtomicUsize,
}

struct Shop {
    log: ShopLog,
    data: Mutex<Data>,
}

#[derive(Default)]
struct Data {
    chunks: BTreeMap<u64, Vec<u8>>,
    rejections: Vec<RejectionRecord>,
    /// Stream name to the positions of its events, in version order.
    streams: HashMap<compact_str::CompactString, Vec<u64>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// How many events `read_from` has returned so far, over all shops.
    pub fn events_read(&self) -> usize {
        self.events_read.load(std::sync::atomic::Ordering::Acquire)
    }

    fn shop(&self, shop: &ShopId) -> Option<Arc<Shop>> {
        self.shops.lock().unwrap_or_else(PoisonError::into_inner).get(shop).cloned()
    }

    fn shop_or_create(&self, shop: &ShopId) -> Arc<Shop> {
        let mut shops = self.shops.lock().unwrap_or_else(PoisonError::into_inner);
        shops
            .entry(shop.clone())
            .or_insert_with(|| {
                let head = Head { last_position: 0, hash: record::genesis_hash(shop) };
                Arc::new(Shop { log: ShopLog::new(head), data: Mutex::new(Data::default()) })
            })
            .clone()
    }

    /// The chunks of `shop_id` from the one holding `from_key` to the end; none for a shop
    /// with no log.
    fn chunks(&self, shop_id: &ShopId, from_key: u64) -> Vec<Result<(u64, Vec<u8>), StoreError>> {
        let Some(shop) = self.shop(shop_id) else { return Vec::new() };
        let data = shop.data.lock().unwrap_or_else(PoisonError::into_inner);
        let start = data.chunks.range(..=from_key).next_back().map_or(from_key, |(first, _)| *first);
        data.chunks.range(start..).map(|(first, bytes)| Ok((*first, bytes.clone()))).collect()
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn shops(&self) -> Result<Vec<ShopId>, StoreError> {
        Ok(self.shops.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect())
    }

    async fn create_shop(&self, shop_id: &ShopId) -> Result<(), StoreError> {
        self.shop_or_create(shop_id);
        Ok(())
    }

    async fn append(&self, shop_id: &ShopId, batch: &AppendBatch) -> Result<u64, StoreError> {
        let shop = self.shop_or_create(shop_id);
        let mut head = shop.log.head.lock().await;
        let (chunks, new_head) = chunks::encode_batch(shop_id, &head, batch.expected_last, &batch.events)?;
        {
            let mut data = shop.data.lock().unwrap_or_else(PoisonError::into_inner);
            data.chunks.extend(chunks);
            data.rejections.extend(batch.rejections.iter().cloned());
            for envelope in &batch.events {
                data.streams.entry(envelope.stream.clone()).or_default().push(envelope.position);
            }
        }
        *head = new_head;
        shop.log.last_position.send_replace(head.last_position);
        Ok(head.last_position)
    }

    async fn read_from(&self, shop_id: &ShopId, after: u64, limit: usize) -> Result<Vec<Envelope>, StoreError> {
        let page = chunks::collect_after(shop_id, self.chunks(shop_id, after + 1).into_iter(), after, limit)?;
        self.events_read.fetch_add(page.len(), std::sync::atomic::Ordering::AcqRel);
        Ok(page)
    }

    async fn read_stream(
        &self,
        shop_id: &ShopId,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        let Some(shop) = self.shop(shop_id) else { return Ok(Vec::new()) };
        let positions: Vec<u64> = {
            let data = shop.data.lock().unwrap_or_else(PoisonError::into_inner);
            let all = data.streams.get(stream).map_or(&[][..], Vec::as_slice);
            all.iter().skip(usize::try_from(after_version).unwrap_or(usize::MAX)).take(limit).copied().collect()
        };
        let mut out = Vec::with_capacity(positions.len());
        for position in positions {
            out.extend(self.read_from(shop_id, position - 1, 1).await?);
        }
        Ok(out)
    }

    async fn last_position(&self, shop_id: &ShopId) -> Result<u64, StoreError> {
        Ok(self.shop(shop_id).map_or(0, |shop| *shop.log.last_position.borrow()))
    }

    async fn wait_for(&self, shop_id: &ShopId, after: u64, timeout: Duration) -> Result<u64, StoreError> {
        let shop = self.shop_or_create(shop_id);
        Ok(chunks::wait_for(&shop.log, after, timeout).await)
    }

    async fn rejections(&self, shop_id: &ShopId) -> Result<Vec<RejectionRecord>, StoreError> {
        let Some(shop) = self.shop(shop_id) else { return Ok(Vec::new()) };
        Ok(shop.data.lock().unwrap_or_else(PoisonError::into_inner).rejections.clone())
    }

    async fn forget_rejections(
        &self,
        shop_id: &ShopId,
        keep_records: usize,
        keep_bytes: usize,
    ) -> Result<u64, StoreError> {
        let Some(shop) = self.shop(shop_id) else { return Ok(0) };
        let mut data = shop.data.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut kept, mut bytes) = (0, 0);
        for record in data.rejections.iter().rev() {
            if kept >= keep_records || bytes >= keep_bytes {
                break;
            }
            kept += 1;
            bytes += postcard::to_allocvec(record).map_or(0, |encoded| encoded.len());
        }
        let forgotten = data.rejections.len() - kept;
        data.rejections.drain(..forgotten);
        Ok(forgotten as u64)
    }

    async fn verify_after(&self, shop_id: &ShopId, after: u64, anchor: Hash) -> Result<VerifyReport, StoreError> {
        let (report, _) =
            chunks::verify_chunks(shop_id, self.chunks(shop_id, after.max(1)).into_iter(), after, anchor)?;
        Ok(report)
    }

    async fn read_verified(
        &self,
        shop_id: &ShopId,
        after: u64,
        anchor: Hash,
        limit: usize,
    ) -> Result<(Vec<Envelope>, Hash), StoreError> {
        let chunks = self.chunks(shop_id, after.max(1)).into_iter();
        let (page, hash) = chunks::read_verified(shop_id, chunks, after, anchor, limit)?;
        self.events_read.fetch_add(page.len(), std::sync::atomic::Ordering::AcqRel);
        Ok((page, hash))
    }

    async fn remove_empty_shop(&self, shop_id: &ShopId) -> Result<bool, StoreError> {
        let mut shops = self.shops.lock().unwrap_or_else(PoisonError::into_inner);
        let empty = shops.get(shop_id).is_none_or(|shop| {
            let data = shop.data.lock().unwrap_or_else(PoisonError::into_inner);
            data.chunks.is_empty() && data.rejections.is_empty()
        });
        if empty {
            shops.remove(shop_id);
        }
        Ok(empty)
    }

    async fn head(&self, shop_id: &ShopId) -> Result<(u64, Hash), StoreError> {
        match self.shop(shop_id) {
            Some(shop) => {
                let head = shop.log.head.lock().await;
                Ok((head.last_position, head.hash))
            }
            None => Ok((0, record::genesis_hash(shop_id))),
        }
    }
}
