"""`polycom generate`: sample text from a trained run (KV-cached decoding).

polycom generate --run runs/a --prompt "ROMEO." --max-new-tokens 200 --temperature 0.8 --top-k 40
"""

from __future__ import annotations

import argparse

from polycom.train.threads import THREADS_HELP


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="Sample text from a trained run",
        description=__doc__,
        epilog=THREADS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", required=True, help="run folder (polycom train / compare)")
    parser.add_argument("--prompt", default="", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=40, help="0 = no top-k filter")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--safe",
        action="store_true",
        help="load run folders only from files that cannot run code (no sharded checkpoints)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from polycom.errors import UserError
    from polycom.train.threads import cpu_threads
    from polycom.utils.hardware import pick_device

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 0 <= args.temperature < float("inf"):  # also refuses nan (every comparison with nan is False)
        raise UserError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = no top-k filter), got {args.top_k}")
    device = pick_device(args.device, option="--device")
    with cpu_threads(device=device):
        text = _generate(args, device)
    print(text if args.prompt else text.lstrip("\n"))
    return 0


def _generate(args: argparse.Namespace, device) -> str:
    import torch

    from polycom.errors import UserError
    from polycom.train.checkpoint import load_run

    model, config, tok, _, _ = load_run(args.run, device=device, step=args.step, safe=args.safe)
    ids = tok.encode(args.prompt)
    if not ids:
        ids = [tok.eos_id if tok.eos_id is not None else int(tok.encode("\n")[0])]
    if len(ids) >= config.max_seq_len:
        raise UserError(f"the prompt is {len(ids)} tokens; the model takes at most {config.max_seq_len - 1}")
    new = min(args.max_new_tokens, config.max_seq_len - len(ids))
    prompt = torch.tensor([ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        out = model.generate(
            prompt, new, temperature=args.temperature, top_k=args.top_k or None, generator=gen, eos_id=tok.eos_id
        )
    return tok.decode(out[0].tolist())
