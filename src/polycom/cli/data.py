"""`polycom data`: prepare token shards, or describe a prepared data folder.

polycom data prepare --out data/shakespeare-byte                      # embedded corpus, byte tokens
polycom data prepare --source my_texts/ --tokenizer bpe --vocab-size 8192 --out data/mine
polycom data prepare --source hf:wikitext:wikitext-2-raw-v1 --tokenizer path/to/hf_tokenizer --out data/wt2
polycom data prepare --source hf:wikitext:wikitext-2-raw-v1 --offline --out data/wt2   # from the HF cache only
polycom data info data/mine
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="Prepare token shards (embedded corpus, local files, HF datasets) or describe them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    prep = sub.add_parser("prepare", help="tokenise a source into train/val token files")
    prep.add_argument(
        "--source", default="embedded", help="embedded | FILE/FOLDER (.txt/.jsonl/.parquet) | hf:NAME[:CONFIG]"
    )
    prep.add_argument("--tokenizer", default="byte", help="byte | bpe (trained here) | local tokenizer folder")
    prep.add_argument("--vocab-size", type=int, default=4096, help="vocab of a trained BPE (default %(default)s)")
    prep.add_argument("--val-fraction", type=float, default=0.05, help="held-out share (default %(default)s)")
    prep.add_argument("--text-field", default="text", help="field of .jsonl/.parquet/HF records")
    prep.add_argument("--hf-split", default="train", help="split of an HF dataset")
    prep.add_argument("--max-documents", type=int, default=0, help="stop after N documents (0 = all)")
    prep.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default="strict",
        help="bytes of .txt/.jsonl files that are not UTF-8: strict = refuse the file naming file and line "
        "(default), replace = substitute U+FFFD",
    )
    prep.add_argument(
        "--offline",
        action="store_true",
        help="hf: sources from the local Hugging Face cache only: no network, no retries (HF_HUB_OFFLINE=1)",
    )
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument("--overwrite", action="store_true", help="replace prepared data in --out")
    prep.set_defaults(handler=run_prepare)
    info = sub.add_parser("info", help="print the metadata of a prepared data folder")
    info.add_argument("folder")
    info.set_defaults(handler=run_info)
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])


def run_prepare(args: argparse.Namespace) -> int:
    import os

    from polycom.data.prepare import PrepareConfig, prepare_data
    from polycom.errors import UserError

    if args.offline:  # read by huggingface_hub / datasets when they are imported, which happens later
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    cfg = PrepareConfig(
        source=args.source,
        tokenizer=args.tokenizer,
        bpe_vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        text_field=args.text_field,
        hf_split=args.hf_split,
        max_documents=args.max_documents,
        text_errors=args.errors,
    )
    try:
        shards = prepare_data(cfg, args.out, overwrite=args.overwrite)
    except UserError as exc:
        if args.offline and args.source.startswith("hf:"):
            raise UserError(f"{exc} (--offline: only datasets already in the Hugging Face cache can be read)") from None
        raise
    m = shards.meta
    print(
        f"{args.out}: {m['train_tokens']:,} train + {m['val_tokens']:,} val tokens "
        f"({m['tokenizer']}, vocab {m['vocab_size']}) from {m['documents']} documents"
    )
    if args.tokenizer == "bpe" and m["vocab_size"] < args.vocab_size:
        print(
            f"note: the BPE vocab is {m['vocab_size']}, not the {args.vocab_size} asked for: the source has "
            "too little text for more merges"
        )
    return 0


def run_info(args: argparse.Namespace) -> int:
    from polycom.data.shards import TokenShards

    shards = TokenShards(args.folder)
    print(json.dumps(shards.meta, indent=2))
    return 0
