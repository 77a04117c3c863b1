"""The client commands (ROCmForge's CLI client): `rfc generate`, `rfc status`, `rfc cancel`,
`rfc models`, `rfc health`, talking to a running `rfc serve` over its native API.

Any failure (server down, timeout, an HTTP error) is one line on stderr and exit status 1.
Ctrl-C during `rfc generate --stream` cancels the request on the server (POST /cancel/{id})
before exiting with 130, as a shell expects of an interrupted command."""

import json
import sys

import click

from rfc.cli.http_client import ClientError, Server

DEFAULT_URL = "http://127.0.0.1:8080"
SERVER_ERROR = 1
INTERRUPTED = 130


def _server_options(fn):
    fn = click.option(
        "--timeout",
        default=300.0,
        show_default=True,
        type=click.FloatRange(min=0.1),
        help="Seconds to wait for an answer.",
    )(fn)
    fn = click.option("--api-key", envvar="RFC_API_KEY", default=None, help="Sent as 'Authorization: Bearer KEY'.")(fn)
    return click.option(
        "--url", envvar="RFC_URL", default=DEFAULT_URL, show_default=True, help="The server's address."
    )(fn)


def _fail(e: ClientError) -> None:
    click.echo(f"rfc: error: {e}", err=True)
    sys.exit(SERVER_ERROR)


def _echo_json(body: dict) -> None:
    """A server's answer as the client commands print it: indented JSON, non-ASCII text as it is."""
    click.echo(json.dumps(body, indent=2, ensure_ascii=False))


@click.command("generate")
@click.argument("prompt")
@click.option("--stream", is_flag=True, help="Print tokens as they are generated (POST /generate/stream).")
@click.option(
    "-n",
    "--max-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Tokens to generate at most (server default 100).",
)
@click.option(
    "--temperature",
    type=click.FloatRange(0.0, 2.0),
    default=None,
    help="Sampling temperature (server default 1.0; 0 = greedy).",
)
@click.option("--top-k", type=click.IntRange(min=0), default=None)
@click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=None)
@click.option("--model", default=None, help="Which served model (default: the server's first).")
@_server_options
def generate_cmd(prompt, stream, max_tokens, temperature, top_k, top_p, model, url, api_key, timeout):
    """Generate text from PROMPT on a running server."""
    server = Server(url, api_key, timeout)
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "model": model,
    }
    body = {k: v for k, v in body.items() if v is not None}
    try:
        if not stream:
            try:
                click.echo(server.post("/generate", body)["text"])
            except KeyboardInterrupt:  # closing the connection cancels the request on the server
                click.echo("\nrfc: interrupted", err=True)
                sys.exit(INTERRUPTED)
            return
        _stream(server, body)
    except ClientError as e:
        _fail(e)


def _stream(server: Server, body: dict) -> None:
    response, events = server.stream("/generate/stream", body)
    request_id = response.headers.get("X-Request-Id")
    click.echo(f"rfc: request {request_id}", err=True)
    reason = None
    try:
        with response:
            for event in events:
                sys.stdout.write(event.get("text") or "")
                sys.stdout.flush()
                if event.get("finished"):
                    reason = event.get("finish_reason")
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        try:
            Server(server.url, server.api_key, 10.0).post(f"/cancel/{request_id}")
            click.echo(f"rfc: cancelled request {request_id}", err=True)
        except ClientError as e:
            click.echo(f"rfc: error: could not cancel request {request_id}: {e}", err=True)
        sys.exit(INTERRUPTED)
    sys.stdout.write("\n")
    if reason in ("failed", "cancelled"):
        click.echo(f"rfc: request {request_id} {reason}", err=True)
        sys.exit(SERVER_ERROR)


@click.command("status")
@click.argument("request_id", type=int)
@_server_options
def status_cmd(request_id, url, api_key, timeout):
    """Show a request's state (GET /status/ID)."""
    try:
        _echo_json(Server(url, api_key, timeout).get(f"/status/{request_id}"))
    except ClientError as e:
        _fail(e)


@click.command("cancel")
@click.argument("request_id", type=int)
@_server_options
def cancel_cmd(request_id, url, api_key, timeout):
    """Cancel a running request (POST /cancel/ID)."""
    try:
        _echo_json(Server(url, api_key, timeout).post(f"/cancel/{request_id}"))
    except ClientError as e:
        _fail(e)


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the server's answer as JSON.")
@_server_options
def models_cmd(as_json, url, api_key, timeout):
    """List the served models (GET /models)."""
    try:
        body = Server(url, api_key, timeout).get("/models")
    except ClientError as e:
        _fail(e)
    if as_json:
        _echo_json(body)
        return
    click.echo(f"{'ID':<28} {'ARCH':<10} {'PARAMS':>7} {'QUANT':<8} {'CONTEXT':>7}  DEVICE")
    for m in body.get("models", []):
        click.echo(
            f"{m.get('id', '?'):<28} {m.get('architecture', '?'):<10} {m.get('parameter_size', '?'):>7} "
            f"{m.get('quantization', '?'):<8} {m.get('context_length', '?'):>7}  {m.get('device', '?')}"
        )


@click.command("health")
@_server_options
def health_cmd(url, api_key, timeout):
    """Show the server's health (GET /health); exit status 1 unless healthy."""
    try:
        body = Server(url, api_key, timeout).get("/health")
    except ClientError as e:
        _fail(e)
    _echo_json(body)
    if body.get("status") != "healthy":
        sys.exit(SERVER_ERROR)
