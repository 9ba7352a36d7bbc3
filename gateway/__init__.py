"""The idlegrid REST gateway: OpenAI-compatible and KServe v2 inference for
partners, earnings for providers, accounts and keys for admins.

    running = await gateway.service.start(config, port=0)
    ... http://127.0.0.1:{running.port}/v1 ...
    await running.stop()
"""
