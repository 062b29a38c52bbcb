-- Records one stored artifact of a succeeded attempt.
INSERT INTO artifacts (task_id, name, size, sha256, content_type, object_key)
VALUES ($1, $2, $3, $4, $5, $6)
