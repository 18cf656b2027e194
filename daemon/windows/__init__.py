"""Consistent sets: quiesce windows (freeze/thaw hooks and their durable records) and the
capture that runs a set inside its window."""
