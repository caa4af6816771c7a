//! The images table and its tags and registry manifests: an image is its layer chain (top
//! first), its environment and where it came from.

use super::{ImageRow, Result, Store, SET_TAG};
use crate::wire;
use rusqlite::{params, OptionalExtension};

impl Store {
    fn image_from_row(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRow> {
        let layers: String = r.get(4)?;
        let env: String = r.get(5)?;
        Ok(ImageRow {
            uuid: r.get(0)?,
            created_at: r.get(1)?,
            parent: r.get(2)?,
            operation: r.get(3)?,
            layers: serde_json::from_str(&layers).unwrap_or_default(),
            env: serde_json::from_str(&env).unwrap_or_default(),
            tags: Vec::new(),
        })
    }

    pub fn image(&self, uuid: &str) -> Result<Option<ImageRow>> {
        let row = self
            .conn()?
            .query_row(
                "SELECT uuid, created_at, parent, operation, layers, env FROM images WHERE uuid = ?1",
                [uuid.to_ascii_lowercase()],
                |r| self.image_from_row(r),
            )
            .optional()?;
        match row {
            Some(mut img) => {
                img.tags = self.tags_of(&img.uuid)?;
                Ok(Some(img))
            }
            None => Ok(None),
        }
    }

    fn tags_of(&self, uuid: &str) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached("SELECT tag FROM tags WHERE image = ?1 ORDER BY tag")?;
        let tags = stmt
            .query_map([uuid], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(tags)
    }

    pub fn find_tag(&self, tag: &str) -> Result<Option<String>> {
        Ok(self
            .conn()?
            .query_row("SELECT image FROM tags WHERE tag = ?1", [tag], |r| r.get(0))
            .optional()?)
    }

    /// All images, newest first, with their tags.
    pub fn images(&self) -> Result<Vec<ImageRow>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT uuid, created_at, parent, operation, layers, env FROM images ORDER BY created_at DESC, rowid DESC",
        )?;
        let rows = stmt
            .query_map([], |r| self.image_from_row(r))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        drop(stmt);
        let mut out = Vec::with_capacity(rows.len());
        for mut img in rows {
            img.tags = self.tags_of(&img.uuid)?;
            out.push(img);
        }
        Ok(out)
    }

    /// Marks `image` as made by operation `op` (who may see it follows the operation).
    pub fn set_image_operation(&self, image: &str, op: &str) -> Result<()> {
        self.write(
            "UPDATE images SET operation = ?2 WHERE uuid = ?1",
            params![image, op],
        )
    }

    /// The images pulled from the manifest with this digest that still exist, oldest first.
    pub fn images_from_manifest(&self, digest: &str) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT i.uuid FROM image_sources s JOIN images i ON i.uuid = s.image
             WHERE s.digest = ?1 ORDER BY i.created_at",
        )?;
        let rows = stmt.query_map([digest], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records that `image` was pulled from the manifest with this digest.
    pub fn set_image_manifest(&self, image: &str, digest: &str) -> Result<()> {
        self.write(
            "INSERT OR IGNORE INTO image_sources(digest, image) VALUES (?1, ?2)",
            params![digest, image],
        )
    }

    /// Points `tag` at `image` (moving it if another image had it).
    pub fn set_tag(&self, image: &str, tag: &str) -> Result<()> {
        self.write(SET_TAG, params![tag, image])
    }

    pub fn remove_tag(&self, image: &str, tag: &str) -> Result<bool> {
        Ok(self.conn()?.execute(
            "DELETE FROM tags WHERE tag = ?1 AND image = ?2",
            params![tag, image],
        )? > 0)
    }

    /// Records a new layer directory (already renamed into place) and an image on top of it
    /// in one transaction.
    pub fn insert_image(&self, image: &ImageRow, new_layers: &[(String, u64)]) -> Result<()> {
        self.transaction(|tx| {
        for (id, size) in new_layers {
            tx.execute(
                // Attachment layers are shared by every run that attaches the same files.
                "INSERT OR IGNORE INTO layers(id, created_at, size) VALUES (?1, ?2, ?3)",
                params![id, wire::now_ts(), *size as i64],
            )?;
        }
        tx.execute(
            "INSERT INTO images(uuid, created_at, parent, operation, layers, env) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                image.uuid,
                image.created_at,
                image.parent,
                image.operation,
                serde_json::to_string(&image.layers).unwrap_or_default(),
                serde_json::to_string(&image.env).unwrap_or_default(),
            ],
        )?;
        for tag in &image.tags {
            tx.execute(
                SET_TAG,
                params![tag, image.uuid],
            )?;
        }
        Ok(())
        })
    }
}
