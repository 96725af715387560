"""Settings shared by every test package.

Hypothesis fails an example that takes longer than its default deadline (200 ms).
CI machines have two cores and run real servers next to the tests, so a slow moment
turned property tests into rare, unexplained failures (seen once in tests/core while
a benchmark shared the machine). The properties are about results, never speed, so
the deadline is off everywhere; speed lives in bench/.
"""

from hypothesis import settings

settings.register_profile("keypost", deadline=None)
settings.load_profile("keypost")
