"""``python -m winnow.pipelines.bench``: the same as ``winnow bench``."""

import sys

from winnow.pipelines.bench.outcomes import main

sys.exit(main())
