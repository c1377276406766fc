"""The aiohttp edge: the public and internal apps, routes, admin, the middleware, workers.

The only package that imports `aiohttp.web`. Handlers parse the request, call the `Gateway`
and build the response; everything they call lives in the packages below this one.
"""
