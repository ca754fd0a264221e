import hcsshim


def test_package_version_is_set() -> None:
    assert hcsshim.__version__.count(".") == 2
