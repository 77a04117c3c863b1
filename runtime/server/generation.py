"""What every API shares to run a request: the model it names, submit with domain errors
mapped to HTTP ones, and the client-disconnect probe."""

from collections.abc import Callable
from dataclasses import replace

import falcon

from rfc.runtime.constraints import Busy, GrammarError
from rfc.runtime.engine import Engine, GenerationRequest, QueueFull, RequestError, RequestState
from rfc.runtime.sampler import SamplingError
from rfc.runtime.server.errors import bad_request, unavailable
from rfc.runtime.server.fields import RequestFields
from rfc.runtime.server.host import EngineHandle, ServedModel
from rfc.runtime.server.openapi import request_links

# What a generation route can answer besides 200 and the body's errors: a `model` not served
# (404), a generation that failed (500: the request alone), loading or a full queue (503).
GENERATION_ERRORS = (404, 500, 503)
# Every generation reply names its request in X-Request-Id, which /status and /cancel take.
BY_REQUEST_ID = request_links("$response.header.X-Request-Id")


def model_for(handle: EngineHandle, f: RequestFields, any_name_if_single: bool = False) -> ServedModel:
    """The served model the body's optional `model` field names (the default when absent)."""
    return handle.require(f.string("model"), any_name_if_single)


def submit(engine: Engine, request: GenerationRequest, req: falcon.Request, resp: falcon.Response) -> RequestState:
    """Queues the request as the caller's own (only its API key may read or cancel it by id)
    and tags the response with its id."""
    try:
        state = engine.submit(replace(request, owner=req.context.get("client")))
    except (RequestError, SamplingError, GrammarError) as e:
        raise bad_request(str(e), e.field) from None
    except QueueFull as e:
        raise unavailable(f"the request queue is full ({e}); retry later") from None
    except Busy as e:
        raise unavailable(f"{e}; retry later") from None
    req.context.request_id = state.request_id
    resp.set_header("X-Request-Id", str(state.request_id))
    return state


def check_token_ids(served: ServedModel, ids: list, field: str) -> list[int]:
    vocab = served.model.vocab_size
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in ids):
        raise bad_request(f"'{field}' token ids must be integers in [0, {vocab})", field)
    return ids


def client_gone(req: falcon.Request) -> Callable[[], bool] | None:
    """waitress's disconnect probe (present when channel_request_lookahead > 0): lets a
    request that writes nothing for a while (queued, or a non-streaming reply) notice that
    its client left."""
    return req.env.get("waitress.client_disconnected")
