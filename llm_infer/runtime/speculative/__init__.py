"""Speculative decoding: proposers (n-gram lookup, a draft model, the target's first layers),
the rejection rule that keeps the target's distribution, and the controller's bookkeeping."""
