"""``python -m seqboat_fairseq.hydra_train``: ``fairseq-hydra-train`` with the plugin loaded first.

``fairseq-hydra-train`` imports Hydra and decorates its entry point before it reads
``common.user_dir``, so the plugin's filters (:mod:`seqboat_fairseq.quiet`) come too late for the
warnings Hydra prints while it starts (``version_base``, the ``# @package _group_`` header,
``validated against ConfigStore schema``, the working-directory notice) and for Hydra's ``DEBUG``
lines. This entry point installs them first and then runs fairseq's own ``cli_main`` unchanged:
the arguments, the config search path and the output are fairseq's.

    python -m seqboat_fairseq.hydra_train --config-dir CONFIG --config-name NAME [overrides ...]
"""

from seqboat_fairseq import quiet


def main() -> None:
    quiet.install()
    from fairseq_cli.hydra_train import cli_main  # imported after the filters: it warns on import

    cli_main()


if __name__ == "__main__":
    main()
