//! Manifests going to and coming from the Arvados API: the signatures of a manifest the API gave are learnt (so
//! that its blocks can be read), and a manifest cafs saves is signed with the signatures this node holds, each
//! renewed first if it has less than half of its life left — Arvados checks every signature of a manifest it
//! is given, and a block whose signature expired can no longer be read from Keep to be written again.

use super::{KeepStore, Permit, Signature, signatures};
use crate::locator::Locator;
use crate::store::{Block, BlockStore, StoreError};

/// The locators of a manifest's text: every token after a line's stream name that parses as one (file tokens
/// hold a `:`, which no locator does).
fn locator_tokens(text: &str) -> impl Iterator<Item = &str> {
    text.lines().flat_map(|l| l.split(' ').skip(1).filter(|t| !t.contains(':') && Locator::parse(t).is_ok()))
}

/// `text` with each locator token replaced by `f` of it.
fn map_locators(text: &str, mut f: impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    for line in text.split_inclusive('\n') {
        let (body, nl) = line.strip_suffix('\n').map_or((line, ""), |b| (b, "\n"));
        for (i, tok) in body.split(' ').enumerate() {
            if i > 0 {
                out.push(' ');
            }
            if i > 0 && !tok.contains(':') && Locator::parse(tok).is_ok() {
                out.push_str(&f(tok));
            } else {
                out.push_str(tok);
            }
        }
        out.push_str(nl);
    }
    out
}

impl KeepStore {
    /// Keeps the signatures of `signed` (a manifest as the API gave it to this node's token).
    pub async fn learn(&self, signed: &str) -> Result<(), StoreError> {
        let now = signatures::now();
        let permits: Vec<(Locator, Permit)> = locator_tokens(signed)
            .filter_map(|t| {
                let l = Locator::parse(t).ok()?;
                let s = Signature::from_hints(l.hints()?, now)?;
                Some((l.stripped(), Permit::Signed(s)))
            })
            .collect();
        if permits.is_empty() {
            return Ok(());
        }
        let book = self.signatures.clone();
        tokio::task::spawn_blocking(move || book.record_all(permits))
            .await
            .map_err(|e| StoreError::Unavailable(format!("recording signatures: {e}")))?
            .map_err(|e| StoreError::io("record", "the signatures of a collection", e))
    }

    /// `text` (a stripped manifest) with every locator signed for this node's token. A block whose signature is
    /// past half its life is written again first (Keep keeps one copy and signs anew), read back with the
    /// signature it has while that is still accepted.
    pub async fn signed_manifest(&self, text: &str) -> Result<String, StoreError> {
        let mut seen = std::collections::HashSet::new();
        for tok in locator_tokens(text) {
            let l = Locator::parse(tok)
                .map_err(|e| StoreError::Refused(format!("manifest locator {tok}: {e}")))?
                .stripped();
            if l.size() == 0 || !seen.insert(l.clone()) {
                continue;
            }
            // A block this node holds no signature for (it never wrote it, nor read a collection naming it) goes
            // unsigned: a cluster that signs refuses the manifest, saying which block.
            if let Some(Permit::Signed(s)) = self.signatures.get(&l)
                && !s.fresh_at(signatures::now())
            {
                self.renew(&l).await?;
            }
        }
        let now = signatures::now();
        Ok(map_locators(text, |tok| {
            let l = Locator::parse(tok).expect("checked above").stripped();
            match self.signatures.get(&l) {
                Some(Permit::Signed(s)) if s.valid_at(now) => format!("{}{}", l.stripped_string(), s.hint()),
                _ => l.stripped_string(),
            }
        }))
    }

    /// Writes the block again for a fresh signature.
    async fn renew(&self, l: &Locator) -> Result<(), StoreError> {
        tracing::debug!(locator = %l, "renewing a block's permission signature");
        let data = self.get(l).await.map_err(|e| {
            StoreError::Refused(format!(
                "block {l} has no permission signature that Keep still accepts, and cannot be read to be written \
                 again: {e}"
            ))
        })?;
        self.put(&Block::verified(l.clone(), data)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locators_are_found_and_replaced_and_nothing_else() {
        let text = ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n./d\\040e 37b51d194a7513e45b56f6524f2d51f2+3 0:3:acbd18db4cc2f85cedef654fccc4a4d8+3\n";
        let found: Vec<&str> = locator_tokens(text).collect();
        assert_eq!(found, ["acbd18db4cc2f85cedef654fccc4a4d8+3", "37b51d194a7513e45b56f6524f2d51f2+3"]);
        let signed = map_locators(text, |t| format!("{t}+Asig"));
        assert_eq!(
            signed,
            ". acbd18db4cc2f85cedef654fccc4a4d8+3+Asig 0:3:foo\n./d\\040e 37b51d194a7513e45b56f6524f2d51f2+3+Asig 0:3:acbd18db4cc2f85cedef654fccc4a4d8+3\n"
        );
        assert_eq!(map_locators("", |t| t.to_string()), "");
    }
}
