"""``uhn import``: capture an nn.Module with torch.export and write its spec and graph."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import command
from .options import parse_shape

# --input-shape: the captured example is a batch of 2 such inputs (2^24 values: 128 MiB in fp32).
MAX_INPUT_SIDE = 65536
MAX_INPUT_VALUES = 2**24


@command("import")
def import_module(
    ref: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:ATTR",
            help="path/to/file.py:Name or package.module:Name (a class or zero-argument factory).",
            show_default=False,
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Spec file to write (*.yaml).", show_default=False)],
    input_shape: Annotated[
        str | None,
        typer.Option(
            "--input-shape",
            help="Input without the batch: C,H,W; F; or T (token ids, for a model starting with an Embedding); each "
            f"size from 1 to {MAX_INPUT_SIDE}, at most {MAX_INPUT_VALUES:,} values in all.",
            show_default=False,
        ),
    ] = None,
    graph: Annotated[
        str | None,
        typer.Option(
            "--graph",
            help="Graph models (called as model(x, edge_index)): the graph dataset, "
            "e.g. cora; or synthetic, with --input-shape F (features per node).",
            show_default=False,
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Task dataset of the spec (default: synthetic data of the input shape).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Spec name (default: the output file's stem).", show_default=False)
    ] = None,
) -> None:
    """Write the spec of an nn.Module captured with torch.export, and its graph (SPEC.graph.json) next to it."""
    import json

    import yaml

    from uhn_spec.errors import UHNError
    from uhn_spec.files import atomic_write_text
    from uhn_spec.importer import import_model, load_module_ref
    from uhn_spec.modes.single import spec_from_text

    if output.suffix not in (".yaml", ".yml"):
        raise UHNError(f"--output: a spec file name ends in .yaml, got {output}")
    shape = None
    if input_shape is not None:
        shape = parse_shape(input_shape, "--input-shape", 3, MAX_INPUT_SIDE, MAX_INPUT_VALUES, "3,32,32")
    module = load_module_ref(ref)
    imported = import_model(module, input_shape=shape, graph=graph, name=name or output.stem, dataset=dataset)
    given = {"--graph": graph, "--input-shape": input_shape, "--dataset": dataset, "--name": name}
    flags = " ".join(f"{flag} {value}" for flag, value in given.items() if value is not None)
    header = (  # the command that wrote the spec, so it can be imported again
        f"# {imported.spec['description']}: `uhn import {ref} {flags} -o {output}`.\n"
        f"# Weights back into the module: uhn export RUN -o model.safetensors --for-module {ref}\n"
    )
    graph_file = output.with_name(f"{output.stem}.graph.json")
    layer = imported.spec["layers"][0]
    atomic_write_text(graph_file, json.dumps(layer["graph"], separators=(",", ":")))
    on_disk = {**imported.spec, "layers": [{**layer, "graph": graph_file.name}]}
    text = header + yaml.safe_dump(on_disk, sort_keys=False)
    spec = spec_from_text(text, output)  # the written spec must read back and validate
    if spec.num_params != imported.num_params:
        raise AssertionError(f"imported spec has {spec.num_params} params, the module {imported.num_params}")
    atomic_write_text(output, text)
    typer.echo(
        f"wrote {output} and {graph_file.name}: {spec.name}, {spec.num_params} params (as the module), "
        f"{len(spec.flat_layers)} described layers"
    )
