"""CLIP backbone loading (open_clip), prompt data and the zero-shot head."""
