"""Write a CLIP's text side once, as the files prompts.class_embeddings / prompts.blank_embedding read.

    python scripts/export_text_embeddings.py --out <folder> [eval.py overrides: clip=..., data=..., prompts=...]

The class names are the dataset's (``data.classnames`` when set), the class embeddings those of the zero-shot head
(``prompts.class_templates``) and the blank anchor CLIPure's (``prompts.blank_templates`` / ``blank_prompt``), all
computed exactly as ``eval.py`` computes them. Writes ``<folder>/class_embeddings.safetensors`` and
``<folder>/blank_embedding.safetensors``; a run given both files never uses the text tower or a tokenizer.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

log = logging.getLogger("export_text_embeddings")


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``--out`` and the config overrides, export, and return ``{"class_embeddings": path, "blank_embedding": path}``."""
    from clipure_lit.cli import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    out = None
    if "--out" in argv:
        i = argv.index("--out")
        if i + 1 >= len(argv):
            print("error: --out needs a folder.", file=sys.stderr)
            raise SystemExit(2)
        out = Path(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    elif not ({"-h", "--help", "--cfg"} & set(argv)):
        print("error: --out <folder> is required (where the two embedding files are written).", file=sys.stderr)
        raise SystemExit(2)

    def job(cfg) -> dict:
        # heavy: the evaluation imports Lightning (~4.5 s), which --help must not pay for
        from clipure_lit.clip.embeddings import save_blank_embedding, save_class_embeddings
        from clipure_lit.clip.zeroshot import build_blank_anchor
        from clipure_lit.data.datamodule import ZeroShotDataModule
        from clipure_lit.evaluation import load_clip
        from clipure_lit.purifiers.clipure_cos import blank_prompt_list

        cfg.prompts.class_embeddings = cfg.prompts.blank_embedding = None  # computed here, not read
        datamodule = ZeroShotDataModule(cfg.data)
        datamodule.setup("test")
        parts = load_clip(cfg, datamodule.classnames)
        anchor = build_blank_anchor(parts.backbone, parts.tokenizer, blank_prompt_list(cfg.prompts), parts.text_cache)
        out.mkdir(parents=True, exist_ok=True)
        classes = save_class_embeddings(out / "class_embeddings.safetensors", parts.head.class_embeddings.t(), parts.classnames)
        blank = save_blank_embedding(out / "blank_embedding.safetensors", anchor)
        log.info("Wrote %s (%d classes) and %s", classes, len(parts.classnames), blank)
        return {"class_embeddings": str(classes), "blank_embedding": str(blank)}

    return run_cli(argv, "scripts/export_text_embeddings.py", "Export a CLIP's class embeddings and blank anchor.", job,
                   lambda r: f"prompts.class_embeddings={r['class_embeddings']} prompts.blank_embedding={r['blank_embedding']}"
                   if r else "")


if __name__ == "__main__":
    main()
