//! The `recorder` table: flight recorders (what to record where); their states on the hosts
//! are reported by the agents and kept in memory.

use serde_json::{json, Value as Json};

use super::{record_key, Store, StoreError};
use crate::model::RecorderRecord;

fn recorder_from_row(mut row: Json) -> Result<RecorderRecord, StoreError> {
    let id = record_key(&row["id"])?;
    row["id"] = json!(id);
    serde_json::from_value(row).map_err(|e| StoreError::Corrupt(format!("recorder {id}: {e}")))
}

impl Store {
    /// Stores a new recorder; returns it with its id.
    pub async fn create_recorder(
        &self,
        recorder: &RecorderRecord,
    ) -> Result<RecorderRecord, StoreError> {
        let mut content = serde_json::to_value(recorder)
            .map_err(|e| StoreError::Corrupt(format!("recorder does not serialize: {e}")))?;
        if let Some(map) = content.as_object_mut() {
            map.remove("id");
            map.remove("states");
        }
        let rows = self
            .query(
                "CREATE type::record('recorder', sequence::nextval('recorder_id')) CONTENT $recorder RETURN AFTER",
                json!({ "recorder": content }),
            )
            .await?;
        rows.into_iter()
            .next()
            .map(recorder_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::Db("recorder create returned nothing".into()))
    }

    /// Every recorder, in id order.
    pub async fn recorders(&self) -> Result<Vec<RecorderRecord>, StoreError> {
        let rows = self
            .query("SELECT * FROM recorder ORDER BY id", json!({}))
            .await?;
        rows.into_iter().map(recorder_from_row).collect()
    }

    /// Deletes a recorder; `None` when there was none.
    pub async fn delete_recorder(&self, id: u64) -> Result<Option<RecorderRecord>, StoreError> {
        let rows = self
            .query(
                "DELETE type::record('recorder', $id) RETURN BEFORE",
                json!({ "id": id }),
            )
            .await?;
        rows.into_iter().next().map(recorder_from_row).transpose()
    }
}
