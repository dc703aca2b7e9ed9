"""`mxdesk operator …` and `mxdesk signature …`: who replies, and what their replies end with."""

from __future__ import annotations

from pathlib import Path

import click

from mxdesk import operators, state
from mxdesk.cli.context import Context, need_state, pass_context
from mxdesk.cli.output import emit_json, emit_table, errors_to_exit, fail, json_option

SIGNATURE_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError:
        raise state.StateError(f"{path}: not UTF-8 text") from None


@click.group("operator")
def operator_group() -> None:
    """Helpdesk agents who reply, and their signatures."""


@operator_group.command("add")
@click.argument("name")
@click.option("--tenant", "tenant_slug", required=True, metavar="SLUG")
@click.option("--signature-file", type=SIGNATURE_FILE, help="Plain-text signature (UTF-8).")
@json_option
@pass_context
@errors_to_exit(state.StateError)
def add(
    ctx: Context, name: str, tenant_slug: str, signature_file: Path | None, as_json: bool
) -> None:
    """Add operator NAME to a tenant."""
    signature = _read(signature_file) if signature_file else ""
    op = operators.add_operator(need_state(ctx), tenant_slug, name, signature)
    if as_json:
        emit_json(op)
    else:
        click.echo(
            f"operator {op.name!r} added to {op.tenant}"
            + (" with a signature" if op.signature else " without a signature")
        )


@operator_group.command("list")
@click.option("--tenant", "tenant_slug", metavar="SLUG")
@json_option
@pass_context
@errors_to_exit(state.StateError)
def list_(ctx: Context, tenant_slug: str | None, as_json: bool) -> None:
    """List operators."""
    conn = need_state(ctx)
    if tenant_slug is not None:
        state.get_tenant(conn, tenant_slug)
    ops = operators.list_operators(conn, tenant_slug)
    if as_json:
        emit_json(ops)
    else:
        emit_table(
            [(o.tenant, o.name, "yes" if o.signature else "no") for o in ops],
            ["tenant", "name", "signature"],
        )


@operator_group.command("set")
@click.argument("name")
@click.option("--tenant", "tenant_slug", required=True, metavar="SLUG")
@click.option("--name", "new_name", metavar="NEW", help="Rename the operator.")
@click.option("--signature-file", type=SIGNATURE_FILE, help="New plain-text signature (UTF-8).")
@click.option("--no-signature", is_flag=True, help="Remove the operator's signature.")
@json_option
@pass_context
@errors_to_exit(state.StateError)
def set_operator(
    ctx: Context,
    name: str,
    tenant_slug: str,
    new_name: str | None,
    signature_file: Path | None,
    no_signature: bool,
    as_json: bool,
) -> None:
    """Rename operator NAME or change their signature (replies written from now on; those
    already written keep theirs)."""
    if signature_file and no_signature:
        fail("give --signature-file or --no-signature, not both")
    if new_name is None and signature_file is None and not no_signature:
        fail("nothing to change: give --name, --signature-file or --no-signature")
    signature = "" if no_signature else (_read(signature_file) if signature_file else None)
    op = operators.set_operator(
        need_state(ctx), tenant_slug, name, new_name=new_name, signature=signature
    )
    if as_json:
        emit_json(op)
    else:
        has = "with a signature" if op.signature else "without a signature"
        click.echo(f"operator {op.name!r} of {op.tenant}: {has}")


@operator_group.command("remove")
@click.argument("name")
@click.option("--tenant", "tenant_slug", required=True, metavar="SLUG")
@pass_context
@errors_to_exit(state.StateError)
def remove_operator(ctx: Context, name: str, tenant_slug: str) -> None:
    """Remove operator NAME from a tenant; the replies they wrote keep their name."""
    op = operators.remove_operator(need_state(ctx), tenant_slug, name)
    click.echo(f"operator {op.name!r} removed from {op.tenant}")


@click.group("signature")
def signature_group() -> None:
    """The tenant's generic signature, used when an operator has none."""


@signature_group.command("set")
@click.option("--tenant", "tenant_slug", required=True, metavar="SLUG")
@click.option("--file", "path", type=SIGNATURE_FILE, required=True)
@pass_context
@errors_to_exit(state.StateError)
def set_(ctx: Context, tenant_slug: str, path: Path) -> None:
    """Set the tenant's generic signature from a UTF-8 text file."""
    operators.set_generic_signature(need_state(ctx), tenant_slug, _read(path))
    click.echo(f"generic signature of {tenant_slug} set")


@signature_group.command("show")
@click.option("--tenant", "tenant_slug", required=True, metavar="SLUG")
@json_option
@pass_context
@errors_to_exit(state.StateError)
def show(ctx: Context, tenant_slug: str, as_json: bool) -> None:
    """Show the tenant's generic signature."""
    conn = need_state(ctx)
    state.get_tenant(conn, tenant_slug)
    text = operators.generic_signature(conn, tenant_slug)
    if as_json:
        emit_json({"tenant": tenant_slug, "signature": text})
    else:
        click.echo(text or "(no generic signature)")
