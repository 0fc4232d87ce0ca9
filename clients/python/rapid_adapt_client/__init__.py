"""Rapid Adapt's Python client: `Client` (sync) and `AsyncClient` (async) with the same
methods, typed results, retries that honour Retry-After, `wait()`, and iterators over
every page. The URL and key come from the arguments or from RAPID_ADAPT_URL and
RAPID_ADAPT_API_KEY.

    from rapid_adapt_client import Client, image_input
    with Client() as c:
        a = c.create_adaptation("omniglot-conv4", [{"input": image_input(png), "label": "a"}, ...])
        a = c.wait(a["id"])
        print(c.predict(a["id"], [image_input(query)])[0]["label"])
"""

from .client import AsyncClient, Client
from .errors import RapidAdaptError
from .inputs import image_input, read_inputs, read_support
from .types import Adaptation, Event, Model, Page, Prediction

__all__ = [
    "Adaptation",
    "AsyncClient",
    "Client",
    "Event",
    "Model",
    "Page",
    "Prediction",
    "RapidAdaptError",
    "image_input",
    "read_inputs",
    "read_support",
]
