-- Many providers: which surface a request came through and which deployment served it,
-- tokens written to a prompt cache, and every rate that applied (cached input, cache
-- writes, reasoning, per image), so that a later rate change never rewrites history.

ALTER TABLE charges
    ADD COLUMN endpoint           TEXT NOT NULL DEFAULT 'chat.completions',
    ADD COLUMN deployment         TEXT NOT NULL DEFAULT '',
    ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN prices             JSONB NOT NULL DEFAULT '{}';
