"""The HTTP service: the app factory, routes per resource, schemas, auth, errors,
middleware, request decoding and the in-process predictor."""
