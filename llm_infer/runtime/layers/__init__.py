"""Model building blocks that are not sharded: norms, rotary embedding, attention."""
