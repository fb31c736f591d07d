"""Progress bars are shown, except for calls made inside an outer loop's `nested()`."""

from alignpro.progress import nested, progress_bar


def test_bars_are_silenced_inside_nested_only():
    with progress_bar(total=1) as outer:
        assert not outer.disable
        with nested():
            with progress_bar(total=1) as inner:
                assert inner.disable
            with nested():
                assert progress_bar(total=1).disable
            assert progress_bar(total=1).disable
        with progress_bar(total=1) as after:
            assert not after.disable
