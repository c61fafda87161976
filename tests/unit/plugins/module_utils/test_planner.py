# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The planner is pure: every test builds the observed host by hand and checks the steps."""

from __future__ import annotations

import copy
import os

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel import _mountinfo as mountinfo
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._hostfs import export_files
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import idmap_mount_path, parse_idmap
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._observe import (
    FuseExport,
    ImageServer,
    LoopDevice,
    NbdDevice,
    Observed,
    PathFacts,
    observe_path,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import (
    MOUNT_DATA_LIMIT,
    OverlayPayload,
    overlay_mount_data,
    split_lowerdir,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.plan._planner import PlanError, plan
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps._steps import mount_device
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import TreeError, parse_filesystems

ROOT_MOUNT = '1 0 8:1 / / rw,relatime - ext4 /dev/sda1 rw'
KERNEL_WORKDIR = ['index', 'work']

# The seed's nested shape, with a raw image layer (loop) instead of nbd.
TREE = {
    'type': 'overlay',
    'upper': '/srv/t/upper',
    'work': '/srv/t/work',
    'lower': [
        {'type': 'overlay', 'upper': '/srv/t/b/upper', 'work': '/srv/t/b/work',
         'lower': ['/srv/t/b/l1', '/srv/t/b/l2'], 'target': '/srv/t/b/merged'},
        {'type': 'file', 'source': '/srv/t/guest.img', 'format': 'raw', 'target': '/srv/t/lower3'},
        '/srv/t/lower2',
    ],
    'target': '/srv/t/merged',
}
TARGETS = ('/srv/t/merged', '/srv/t/b/merged', '/srv/t/lower3')

NESTED_MOUNTED = ('50 1 0:50 / /srv/t/b/merged rw,relatime - overlay overlay rw,lowerdir=/srv/t/b/l1:/srv/t/b/l2,'
                  'upperdir=/srv/t/b/upper,workdir=/srv/t/b/work,uuid=on')
IMAGE_MOUNTED = '51 1 7:0 / /srv/t/lower3 ro,relatime - ext4 /dev/loop0 rw'
TOP_MOUNTED = ('52 1 0:52 / /srv/t/merged rw,nodev,relatime - overlay overlay rw,lowerdir=/srv/t/b/merged:/srv/t/lower3:'
               '/srv/t/lower2,upperdir=/srv/t/upper,workdir=/srv/t/work,uuid=on')
TOP_DRIFTED = ('52 1 0:52 / /srv/t/merged rw,nodev,relatime - overlay overlay rw,lowerdir=/srv/t/other:/srv/t/lower2,'
               'upperdir=/srv/t/upper,workdir=/srv/t/work')
LOOP0 = LoopDevice('/dev/loop0', 7, 0, '/srv/t/guest.img', True, [])


def facts(path, kind='dir', entries=(), realpath=None, identity=None, rdev=None, volatile_leftover=False):
    """A PathFacts filled in by hand (nothing is stat'ed)."""
    exists = kind is not None
    return PathFacts(path, realpath or path, exists=exists, is_dir=kind == 'dir', is_file=kind == 'file',
                     is_block=kind == 'block', identity=identity or ((1, abs(hash(path))) if exists else None),
                     rdev=rdev, entries=tuple(sorted(entries)), volatile_leftover=volatile_leftover)


def observed(roots, lines=(), loops=(), missing=(), override=None, **host):
    """Observe what the trees mention, as observe.observe() does, but by hand."""
    override = override or {}
    paths = {}
    for root in roots:
        for node in root.walk():
            for role, path in node.paths_used():
                if path in paths:
                    continue
                if path in override:
                    paths[path] = override[path]
                elif path in missing:
                    paths[path] = facts(path, kind=None)
                elif node.kind == 'file' and role == 'source':
                    paths[path] = facts(path, kind='file')
                elif node.kind == 'block' and role == 'source':
                    paths[path] = facts(path, kind='block', rdev=(8, 16))
                else:
                    paths[path] = facts(path)
    return Observed(mountinfo.parse('\n'.join((ROOT_MOUNT,) + tuple(lines))), list(loops), paths, **host)


def roots_of(*trees):
    return parse_filesystems([copy.deepcopy(tree) for tree in trees])


def summary(steps):
    """(action, what it acts on) for each step."""
    subject = {'mkdir': 'path', 'discard_volatile_marker': 'path', 'attach_loop': 'image', 'detach_loop': 'device',
               'detach_nbd': 'device', 'attach_nbd': 'image', 'load_module': 'module', 'start_export': 'image', 'stop_export': 'export'}
    return [(step.action, step.to_dict()[subject.get(step.action, 'target')]) for step in steps]


def test_nothing_mounted_builds_bottom_up():
    roots = roots_of(TREE)
    steps = plan(roots, observed(roots, missing=TARGETS), 'mounted')
    assert summary(steps) == [
        ('mkdir', '/srv/t/b/merged'),
        ('mount', '/srv/t/b/merged'),
        ('mkdir', '/srv/t/lower3'),
        ('attach_loop', '/srv/t/guest.img'),
        ('mount', '/srv/t/lower3'),
        ('mkdir', '/srv/t/merged'),
        ('mount', '/srv/t/merged'),
    ]
    nested, image, top = [step for step in steps if step.action == 'mount']
    assert nested.kind == 'overlay' and top.kind == 'overlay'
    wanted_lowers = ['/srv/t/b/merged', '/srv/t/lower3', '/srv/t/lower2']
    assert split_lowerdir(top.payload.data.split(',')[0][len('lowerdir='):]) == wanted_lowers
    assert top.payload.data == overlay_mount_data(['/srv/t/b/merged', '/srv/t/lower3', '/srv/t/lower2'],
                                                  '/srv/t/upper', '/srv/t/work', {})
    assert (image.kind, image.ref, image.device, image.readonly) == \
        ('device', 'filesystems[0].lower[1]', None, True)
    assert steps[3].ref == image.ref  # the mount uses the device the attach step gets
    attach = steps[3]
    assert attach.readonly is True  # image layers are attached read-only
    for step in steps:
        assert step.description


def test_missing_upper_and_work_dirs_are_created_before_the_overlay():
    roots = roots_of(TREE)
    steps = plan(roots, observed(roots, missing=TARGETS + ('/srv/t/upper', '/srv/t/work')), 'mounted')
    actions = summary(steps)
    top_mount = actions.index(('mount', '/srv/t/merged'))
    for path in ('/srv/t/upper', '/srv/t/work', '/srv/t/merged'):
        assert actions.index(('mkdir', path)) < top_mount


def test_a_free_loop_device_of_the_image_is_reused():
    roots = roots_of(TREE)
    steps = plan(roots, observed(roots, [NESTED_MOUNTED, TOP_MOUNTED], loops=[LOOP0], missing=('/srv/t/lower3',),
                                 override={'/srv/t/work': facts('/srv/t/work', entries=KERNEL_WORKDIR)}),
                 'mounted', on_drift='replace')
    assert 'attach_loop' not in [step.action for step in steps]
    image = [step for step in steps if step.action == 'mount' and step.target == '/srv/t/lower3'][0]
    assert image.device == '/dev/loop0'


def test_everything_mounted_gives_an_empty_plan():
    roots = roots_of(TREE)
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, TOP_MOUNTED], loops=[LOOP0],
                   override={'/srv/t/work': facts('/srv/t/work', entries=KERNEL_WORKDIR)})
    assert plan(roots, obs, 'mounted') == []
    assert plan(roots, obs, 'mounted', on_drift='replace') == []


@pytest.mark.parametrize('shown, asked, added', [
    ('rw,relatime', None, ('nodev',)),  # mounted before mount flags, or by hand: nodev is added in place
    ('rw,noexec,relatime', ['nosuid', 'nodev'], ('nodev', 'nosuid')),
    ('rw,nodev,noexec,relatime', None, ()),  # more than asked: nothing is taken away
    ('rw,nodev,relatime', [], ()),
])
def test_a_tree_mounted_without_some_of_its_mount_flags_gets_them_in_place_not_as_drift(shown, asked, added):
    roots = roots_of(TREE if asked is None else dict(TREE, mount_flags=asked))
    top = TOP_MOUNTED.replace(' rw,nodev,relatime ', ' %s ' % shown)
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, top], loops=[LOOP0],
                   override={'/srv/t/work': facts('/srv/t/work', entries=KERNEL_WORKDIR)})
    steps = plan(roots, obs, 'mounted')
    assert [(one.action, one.target, one.add, one.remove) for one in steps] == (
        [('set_mount_flags', '/srv/t/merged', added, ())] if added else [])


def test_a_duplicate_stacked_mount_of_the_same_tree_still_matches():
    roots = roots_of(TREE)
    duplicate = TOP_MOUNTED.replace('52 1 0:52', '53 52 0:53')
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, TOP_MOUNTED, duplicate], loops=[LOOP0])
    assert plan(roots, obs, 'mounted') == []
    steps = plan(roots, obs, 'unmounted')
    assert summary(steps)[:2] == [('unmount', '/srv/t/merged'), ('unmount', '/srv/t/merged')]


def test_the_planner_is_pure(monkeypatch):
    roots = roots_of(TREE)
    obs = observed(roots, [NESTED_MOUNTED], missing=('/srv/t/merged', '/srv/t/lower3'))
    mounts_before = [entry.to_dict() for entry in obs.mounts]
    paths_before = dict(obs.paths)

    def forbidden(*args, **kwargs):
        raise AssertionError('the planner touched the host: %r' % (args,))

    with monkeypatch.context() as patch:
        for name in ('stat', 'lstat', 'listdir', 'access', 'mkdir', 'rmdir', 'scandir'):
            patch.setattr(os, name, forbidden)
        for name in ('realpath', 'exists', 'isdir', 'isfile'):
            patch.setattr(os.path, name, forbidden)
        first = plan(roots, obs, 'mounted')
        second = plan(roots, obs, 'mounted')
        teardown = plan(roots, obs, 'unmounted')
    assert first == second
    assert summary(first)[-1] == ('mount', '/srv/t/merged')
    assert summary(teardown) == [('unmount', '/srv/t/b/merged')]
    assert [entry.to_dict() for entry in obs.mounts] == mounts_before
    assert obs.paths == paths_before  # records are immutable; the mapping holds the same ones


# --- drift ------------------------------------------------------------------------------------------

def test_drift_is_refused_showing_both_layer_lists():
    roots = roots_of(TREE)
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, TOP_DRIFTED], loops=[LOOP0])
    with pytest.raises(PlanError) as error:
        plan(roots, obs, 'mounted')
    message = str(error.value)
    assert 'drift at' in message and '/srv/t/merged' in message
    assert 'lowerdir=/srv/t/other:/srv/t/lower2' in message            # mounted now
    assert 'lowerdir=/srv/t/b/merged:/srv/t/lower3:/srv/t/lower2' in message  # wanted
    assert 'on_drift=replace' in message


def test_drift_with_replace_unmounts_then_mounts():
    roots = roots_of(TREE)
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, TOP_DRIFTED], loops=[LOOP0],
                   override={'/srv/t/work': facts('/srv/t/work', entries=KERNEL_WORKDIR)})
    steps = plan(roots, obs, 'mounted', on_drift='replace')
    assert summary(steps) == [('unmount', '/srv/t/merged'), ('mount', '/srv/t/merged')]
    restore = steps[0].restore
    assert restore.kind == 'overlay' and restore.target == '/srv/t/merged'
    assert restore.lowers == ('/srv/t/other', '/srv/t/lower2')
    assert (restore.upper, restore.work) == ('/srv/t/upper', '/srv/t/work')


def test_drift_by_options_is_detected():
    tree = dict(TREE, options={'index': 'on'})
    roots = roots_of(tree)
    shown_off = TOP_MOUNTED + ',index=off'
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, shown_off], loops=[LOOP0])
    with pytest.raises(PlanError, match='index=off'):
        plan(roots, obs, 'mounted')


def test_drift_of_a_readonly_flag_is_detected():
    roots = roots_of(dict(TREE, readonly=True))
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, TOP_MOUNTED], loops=[LOOP0])
    with pytest.raises(PlanError, match='drift'):
        plan(roots, obs, 'mounted')


def test_something_else_mounted_at_a_target_is_drift():
    roots = roots_of(TREE)
    tmpfs = '52 1 0:52 / /srv/t/merged rw,relatime - tmpfs scratch rw,size=64k'
    with pytest.raises(PlanError) as error:
        plan(roots, observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, tmpfs], loops=[LOOP0]), 'mounted')
    assert 'tmpfs from scratch' in str(error.value)


def test_stale_parent_with_its_nested_child_missing_is_refused():
    roots = roots_of(TREE)
    obs = observed(roots, [IMAGE_MOUNTED, TOP_MOUNTED], loops=[LOOP0])
    with pytest.raises(PlanError) as error:
        plan(roots, obs, 'mounted')
    message = str(error.value)
    assert '/srv/t/merged' in message and 'on_drift=replace' in message
    assert 'lowerdir=/srv/t/b/merged:/srv/t/lower3:/srv/t/lower2' in message


def test_stale_parent_is_remounted_after_its_child_with_replace():
    roots = roots_of(TREE)
    obs = observed(roots, [IMAGE_MOUNTED, TOP_MOUNTED], loops=[LOOP0],
                   override={'/srv/t/work': facts('/srv/t/work', entries=KERNEL_WORKDIR)})
    steps = plan(roots, obs, 'mounted', on_drift='replace')
    assert summary(steps) == [('unmount', '/srv/t/merged'), ('mount', '/srv/t/b/merged'), ('mount', '/srv/t/merged')]


def test_drifted_child_and_parent_unmount_top_down_and_mount_bottom_up():
    roots = roots_of(TREE)
    nested_drifted = NESTED_MOUNTED.replace('lowerdir=/srv/t/b/l1:/srv/t/b/l2', 'lowerdir=/srv/t/b/l1')
    obs = observed(roots, [nested_drifted, IMAGE_MOUNTED, TOP_MOUNTED], loops=[LOOP0],
                   override={'/srv/t/work': facts('/srv/t/work', entries=KERNEL_WORKDIR),
                             '/srv/t/b/work': facts('/srv/t/b/work', entries=KERNEL_WORKDIR)})
    steps = plan(roots, obs, 'mounted', on_drift='replace')
    assert summary(steps) == [('unmount', '/srv/t/merged'), ('unmount', '/srv/t/b/merged'),
                              ('mount', '/srv/t/b/merged'), ('mount', '/srv/t/merged')]


def test_lower_only_overlay_shown_with_kernel_added_redirect_dir_matches():
    tree = {'type': 'overlay', 'lower': ['/srv/r/l1', '/srv/r/l2'], 'target': '/srv/r/m'}
    roots = roots_of(tree)
    # measured on 6.18: the kernel adds redirect_dir=on to an overlay without upper
    line = '67 1 0:41 / /srv/r/m rw,nodev,relatime - overlay overlay ro,lowerdir=/srv/r/l1:/srv/r/l2,redirect_dir=on'
    assert plan(roots, observed(roots, [line]), 'mounted') == []


@pytest.mark.parametrize('value', ['follow', 'off'])
def test_lower_only_overlay_with_redirect_dir_the_kernel_rewrites_is_not_drift(value):
    # measured on 6.18: without an upper dir, follow (and off, with redirect_always_follow=Y) shows as on
    tree = {'type': 'overlay', 'lower': ['/srv/r/l1', '/srv/r/l2'], 'target': '/srv/r/m',
            'options': {'redirect_dir': value}}
    roots = roots_of(tree)
    line = '67 1 0:41 / /srv/r/m rw,nodev,relatime - overlay overlay ro,lowerdir=/srv/r/l1:/srv/r/l2,redirect_dir=on'
    assert plan(roots, observed(roots, [line]), 'mounted') == []


@pytest.mark.parametrize('value', ['follow', 'off'])
def test_overlay_with_upper_shown_with_redirect_dir_on_is_drift_from_off_or_follow(value):
    roots = roots_of(dict(TREE, options={'redirect_dir': value}))
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, TOP_MOUNTED + ',redirect_dir=on'], loops=[LOOP0])
    with pytest.raises(PlanError, match='drift'):
        plan(roots, obs, 'mounted')


def test_overlay_with_upper_shown_with_redirect_dir_on_is_drift_from_nofollow():
    roots = roots_of(dict(TREE, options={'redirect_dir': 'nofollow'}))
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, TOP_MOUNTED + ',redirect_dir=on'], loops=[LOOP0])
    with pytest.raises(PlanError, match='drift'):
        plan(roots, obs, 'mounted')


def test_uuid_auto_resolved_by_the_kernel_to_on_is_not_drift():
    roots = roots_of(dict(TREE, options={'uuid': 'auto'}))
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, TOP_MOUNTED], loops=[LOOP0])
    assert 'uuid=on' in TOP_MOUNTED
    assert plan(roots, obs, 'mounted') == []


def test_uuid_on_shown_as_on_matches_and_null_is_drift():
    roots = roots_of(dict(TREE, options={'uuid': 'on'}))
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, TOP_MOUNTED], loops=[LOOP0])
    assert plan(roots, obs, 'mounted') == []
    roots = roots_of(dict(TREE, options={'uuid': 'null'}))
    with pytest.raises(PlanError, match='drift'):
        plan(roots, obs, 'mounted')


def test_volatile_shown_as_fsync_volatile_matches():
    tree = dict(TREE, options={'volatile': True})
    roots = roots_of(tree)
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, TOP_MOUNTED + ',fsync=volatile'], loops=[LOOP0])
    assert plan(roots, obs, 'mounted') == []


@pytest.mark.parametrize('shown', [
    'lowerdir=/srv/t/b/merged/:/srv/t/lower3:/srv/t/lower2,upperdir=/srv/t/upper/,workdir=/srv/t/work',
    'lowerdir=/srv/t/b//merged:/srv/t/./lower3:/srv/t/lower2,upperdir=/srv/t/upper,workdir=/srv/t//work',
])
def test_layers_shown_with_trailing_or_doubled_slashes_match(shown):
    roots = roots_of(TREE)
    line = '52 1 0:52 / /srv/t/merged rw,nodev,relatime - overlay overlay rw,' + shown
    assert plan(roots, observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, line], loops=[LOOP0]), 'mounted') == []


def test_layers_shown_with_a_leading_double_slash_match():
    roots = roots_of(TREE)
    line = ('52 1 0:52 / /srv/t/merged rw,nodev,relatime - overlay overlay rw,lowerdir=//srv/t/b/merged:/srv/t/lower3:'
            '/srv/t/lower2,upperdir=//srv/t/upper,workdir=/srv/t/work')
    assert plan(roots, observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, line], loops=[LOOP0]), 'mounted') == []


def test_escaped_layers_in_mountinfo_match_hostile_paths():
    lowers = ['/srv/h/l:2', '/srv/h/l,3', '/srv/h/l\\4', '/srv/h/l 5', '/srv/h/l\n6']
    tree = {'upper': '/srv/h/u,x:y', 'work': '/srv/h/w', 'lower': lowers, 'target': '/srv/h/m t'}
    roots = roots_of(tree)
    line = ('71 1 0:39 / /srv/h/m\\040t rw,nodev,relatime - overlay overlay rw,lowerdir=/srv/h/l\\134:2:'
            '/srv/h/l\\134\\0543:/srv/h/l\\134\\1344:/srv/h/l\\0405:/srv/h/l\\0126,'
            'upperdir=/srv/h/u\\134\\054x\\134:y,workdir=/srv/h/w,uuid=on')
    assert plan(roots, observed(roots, [line]), 'mounted') == []


# --- unmounted ----------------------------------------------------------------------------------------

def test_unmounted_tears_down_top_down_then_detaches_the_loop():
    roots = roots_of(TREE)
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, TOP_MOUNTED], loops=[LOOP0])
    steps = plan(roots, obs, 'unmounted')
    assert summary(steps) == [('unmount', '/srv/t/merged'), ('unmount', '/srv/t/b/merged'),
                              ('unmount', '/srv/t/lower3'), ('detach_loop', '/dev/loop0')]
    detach = steps[-1]
    assert (detach.image, detach.readonly) == ('/srv/t/guest.img', True)
    assert steps[0].restore.lowers == ('/srv/t/b/merged', '/srv/t/lower3', '/srv/t/lower2')
    assert steps[2].restore == mount_device('filesystems[0].lower[1]', '/srv/t/lower3', '/dev/loop0', True,
                                            ref='filesystems[0].lower[1]')


def test_unmounted_when_nothing_is_mounted_is_empty():
    roots = roots_of(TREE)
    assert plan(roots, observed(roots, missing=TARGETS), 'unmounted') == []


def test_unmounted_detaches_a_leftover_free_loop_of_the_image():
    roots = roots_of(TREE)
    assert summary(plan(roots, observed(roots, loops=[LOOP0]), 'unmounted')) == [('detach_loop', '/dev/loop0')]


def test_unmounted_keeps_a_loop_device_that_is_still_mounted_elsewhere():
    roots = roots_of(TREE)
    elsewhere = '60 1 7:0 / /mnt/elsewhere ro,relatime - ext4 /dev/loop0 rw'
    obs = observed(roots, [IMAGE_MOUNTED, elsewhere], loops=[LOOP0])
    assert summary(plan(roots, obs, 'unmounted')) == [('unmount', '/srv/t/lower3')]


def test_unmounted_refuses_to_unmount_something_the_tree_does_not_describe():
    roots = roots_of(TREE)
    obs = observed(roots, [NESTED_MOUNTED, IMAGE_MOUNTED, TOP_DRIFTED], loops=[LOOP0])
    with pytest.raises(PlanError) as error:
        plan(roots, obs, 'unmounted')
    assert 'refusing to unmount' in str(error.value) and '/srv/t/other' in str(error.value)
    steps = plan(roots, obs, 'unmounted', on_drift='replace')
    assert summary(steps)[0] == ('unmount', '/srv/t/merged')


def test_unmounted_batch_tears_down_dependents_first():
    shared = {'type': 'overlay', 'upper': '/srv/s/u', 'work': '/srv/s/w', 'lower': ['/srv/s/l'],
              'target': '/srv/s/merged'}
    ct = {'type': 'overlay', 'upper': '/srv/c/u', 'work': '/srv/c/w', 'lower': ['/srv/s/merged', '/srv/c/l'],
          'target': '/srv/c/rootfs'}
    roots = roots_of(ct, shared)
    lines = ['80 1 0:80 / /srv/s/merged rw - overlay overlay rw,lowerdir=/srv/s/l,upperdir=/srv/s/u,workdir=/srv/s/w',
             '81 1 0:81 / /srv/c/rootfs rw - overlay overlay rw,lowerdir=/srv/s/merged:/srv/c/l,upperdir=/srv/c/u,'
             'workdir=/srv/c/w']
    obs = observed(roots, lines)
    assert summary(plan(roots, obs, 'unmounted')) == [('unmount', '/srv/c/rootfs'), ('unmount', '/srv/s/merged')]
    fresh = observed(roots, missing=('/srv/s/merged', '/srv/c/rootfs'))
    mounts = [step.target for step in plan(roots, fresh, 'mounted') if step.action == 'mount']
    assert mounts == ['/srv/s/merged', '/srv/c/rootfs']


# --- host rules -----------------------------------------------------------------------------------

SIMPLE = {'upper': '/srv/s/upper', 'work': '/srv/s/work', 'lower': ['/srv/s/l1', '/srv/s/l2'], 'target': '/srv/s/m'}


def plan_simple(lines=(), override=None, missing=('/srv/s/m',), tree=None, **kwargs):
    roots = roots_of(tree or SIMPLE)
    return plan(roots, observed(roots, lines, missing=missing, override=override), 'mounted', **kwargs)


def test_work_dir_with_foreign_entries_is_refused():
    with pytest.raises(PlanError) as error:
        plan_simple(override={'/srv/s/work': facts('/srv/s/work', entries=['index', 'junk', 'work'])})
    message = str(error.value)
    assert 'work dir /srv/s/work must be empty' in message
    assert 'junk' in message and 'index' not in message.split('holds', 1)[1]


def test_work_dir_with_only_kernel_leftovers_is_accepted():
    steps = plan_simple(override={'/srv/s/work': facts('/srv/s/work', entries=KERNEL_WORKDIR)})
    assert summary(steps) == [('mkdir', '/srv/s/m'), ('mount', '/srv/s/m')]


def test_work_dir_with_a_volatile_leftover_is_refused_by_default_with_the_choice_named():
    with pytest.raises(PlanError) as error:
        plan_simple(override={'/srv/s/work': facts('/srv/s/work', entries=['work'], volatile_leftover=True)})
    message = str(error.value)
    assert 'work dir /srv/s/work holds work/incompat/volatile' in message
    assert 'even after a clean reboot' in message and 'on_volatile_marker: discard' in message


def test_a_volatile_leftover_is_discarded_just_before_the_mount_when_asked():
    steps = plan_simple(override={'/srv/s/work': facts('/srv/s/work', entries=['work'], volatile_leftover=True)},
                        on_volatile_marker='discard')
    assert summary(steps) == [('mkdir', '/srv/s/m'), ('discard_volatile_marker', '/srv/s/work/work/incompat/volatile'),
                              ('mount', '/srv/s/m')]
    assert 'the upper dir is mounted as it is' in steps[1].description


def test_real_directories_work_dir_rules(tmp_path):
    """The same rules with PathFacts of real directories."""
    for name in ('upper', 'work', 'l1', 'l2'):
        (tmp_path / name).mkdir()
    tree = {'upper': str(tmp_path / 'upper'), 'work': str(tmp_path / 'work'),
            'lower': [str(tmp_path / 'l1'), str(tmp_path / 'l2')], 'target': str(tmp_path / 'm')}
    roots = roots_of(tree)

    def observe_real():
        paths = dict((path, observe_path(path, work_dir=role == 'work')) for node in roots[0].walk()
                     for role, path in node.paths_used())
        return Observed(mountinfo.parse(ROOT_MOUNT), [], paths)

    (tmp_path / 'work' / 'work').mkdir()
    (tmp_path / 'work' / 'index').mkdir()
    assert summary(plan(roots, observe_real(), 'mounted')) == [('mkdir', str(tmp_path / 'm')),
                                                               ('mount', str(tmp_path / 'm'))]
    (tmp_path / 'work' / 'stray.txt').write_text('x')
    with pytest.raises(PlanError, match='stray.txt'):
        plan(roots, observe_real(), 'mounted')
    (tmp_path / 'work' / 'stray.txt').unlink()
    (tmp_path / 'work' / 'work' / 'incompat' / 'volatile').mkdir(parents=True)
    with pytest.raises(PlanError, match='incompat/volatile'):
        plan(roots, observe_real(), 'mounted')


def test_upper_and_work_on_different_mounts_are_refused():
    other = '60 1 8:2 / /srv/s/work rw,relatime - ext4 /dev/sdb1 rw'
    with pytest.raises(PlanError) as error:
        plan_simple([other])
    assert 'same mount' in str(error.value)
    assert '/srv/s/upper (on /)' in str(error.value) and '/srv/s/work (on /srv/s/work)' in str(error.value)


def test_upper_and_work_on_the_same_non_root_mount_are_fine():
    data = '60 1 8:2 / /srv/s rw,relatime - ext4 /dev/sdb1 rw'
    assert summary(plan_simple([data]))[-1] == ('mount', '/srv/s/m')


def test_upper_on_an_overlay_is_refused():
    under = '60 1 0:60 / /srv/s rw,relatime - overlay overlay rw,lowerdir=/x:/y'
    with pytest.raises(PlanError, match='overlay mounted at /srv/s'):
        plan_simple([under])


def test_upper_on_a_readonly_mount_is_refused():
    under = '60 1 8:2 / /srv/s ro,relatime - ext4 /dev/sdb1 rw'
    with pytest.raises(PlanError, match='read-only'):
        plan_simple([under])


@pytest.mark.parametrize('line, role', [
    ('70 1 0:70 / /srv/other rw - overlay overlay rw,lowerdir=/x,upperdir=/srv/s/upper,workdir=/srv/o/work', 'upper'),
    ('70 1 0:70 / /srv/other rw - overlay overlay rw,lowerdir=/x,upperdir=/srv/o/upper,workdir=/srv/s/work', 'work'),
])
def test_upper_or_work_in_use_by_another_mounted_overlay_is_refused(line, role):
    with pytest.raises(PlanError) as error:
        plan_simple([line])
    assert '%s /srv/s/%s is already in use by the overlay mounted at /srv/other' % (role, role) in str(error.value)


def test_stacking_on_a_host_overlay_beyond_two_levels_is_refused():
    # /srv/s/l1 lives on an overlay, and a nested overlay stands on it: 3 levels
    host = '60 1 0:60 / /srv/s/l1 rw - overlay overlay rw,lowerdir=/x:/y'
    tree = {'upper': '/srv/s/upper', 'work': '/srv/s/work',
            'lower': [{'type': 'overlay', 'lower': ['/srv/s/l1/a', '/srv/s/l2'], 'target': '/srv/s/n'}],
            'target': '/srv/s/m'}
    with pytest.raises(PlanError, match='stack 3 filesystems deep'):
        plan_simple([host], tree=tree, missing=('/srv/s/m', '/srv/s/n'))


def test_a_lower_on_a_two_deep_host_overlay_is_refused():
    lines = ['60 1 0:60 / /h1 rw - overlay overlay rw,lowerdir=/x:/y',
             '61 1 0:61 / /h2 rw - overlay overlay rw,lowerdir=/h1/sub:/z']
    tree = {'upper': '/srv/s/upper', 'work': '/srv/s/work', 'lower': ['/h2/data'], 'target': '/srv/s/m'}
    with pytest.raises(PlanError, match='stack 3 filesystems deep'):
        plan_simple(lines, tree=tree)


def test_an_overlay_on_another_trees_two_deep_overlay_is_refused():
    shared = {'upper': '/s/u', 'work': '/s/w', 'target': '/s/merged',
              'lower': [{'type': 'overlay', 'lower': ['/s/a', '/s/b'], 'target': '/s/n'}]}
    ct = {'upper': '/c/u', 'work': '/c/w', 'lower': ['/s/merged'], 'target': '/c/m'}
    with pytest.raises((TreeError, PlanError), match='deep'):
        roots = roots_of(ct, shared)
        plan(roots, observed(roots, missing=('/s/merged', '/s/n', '/c/m')), 'mounted')


def test_an_overlay_on_another_trees_one_deep_overlay_is_fine():
    shared = {'upper': '/s/u', 'work': '/s/w', 'target': '/s/merged', 'lower': ['/s/a']}
    ct = {'upper': '/c/u', 'work': '/c/w', 'lower': ['/s/merged'], 'target': '/c/m'}
    roots = roots_of(ct, shared)
    steps = plan(roots, observed(roots, missing=('/s/merged', '/c/m')), 'mounted')
    assert [step.target for step in steps if step.action == 'mount'] == ['/s/merged', '/c/m']


def _long_tree(count, length):
    lowers = ['/srv/long/%s%03d' % ('x' * (length - 13), index) for index in range(count)]
    assert all(len(path) == length for path in lowers)
    return {'upper': '/srv/s/upper', 'work': '/srv/s/work', 'lower': lowers, 'target': '/srv/s/m'}


def test_mount_data_over_one_page_with_short_paths_goes_to_fsconfig():
    tree = _long_tree(40, 120)
    data = overlay_mount_data(tree['lower'], tree['upper'], tree['work'], {})
    assert len(data) > MOUNT_DATA_LIMIT
    steps = plan_simple(tree=tree)
    mount = steps[-1]
    assert mount.payload.api == 'fsconfig' and list(mount.lowers) == tree['lower']
    assert (mount.upper, mount.work, mount.options) == ('/srv/s/upper', '/srv/s/work', {})


def test_mount_data_over_4095_bytes_with_a_long_path_is_refused():
    tree = _long_tree(16, 300)  # 16 x 300 bytes > 4095, and 300 bytes is beyond fsconfig's 255
    with pytest.raises(PlanError) as error:
        plan_simple(tree=tree)
    assert '4095' in str(error.value) and '255' in str(error.value)


def test_mount_data_counts_bytes_not_characters():
    # 14 paths of 159 characters but 309 bytes each: ~2300 characters, ~4400 bytes
    lowers = ['/srv/u/%02d' % index + '\u00e9' * 150 for index in range(14)]
    data = overlay_mount_data(lowers, '/srv/s/upper', '/srv/s/work', {})
    assert len(data) <= MOUNT_DATA_LIMIT < len(data.encode('utf-8'))
    tree = {'upper': '/srv/s/upper', 'work': '/srv/s/work', 'lower': lowers, 'target': '/srv/s/m'}
    with pytest.raises(PlanError, match='4095'):
        plan_simple(tree=tree)


def test_mount_data_of_exactly_4095_bytes_goes_through_mount2():
    lowers = ['/srv/' + 'a' * 200 + '/%02d' % index for index in range(14)]
    base = len(overlay_mount_data(lowers, '/srv/s/upper', '/srv/s/work', {}))
    lowers.append('/srv/' + 'b' * (MOUNT_DATA_LIMIT - base - 1 - 5))
    data = overlay_mount_data(lowers, '/srv/s/upper', '/srv/s/work', {})
    assert len(data) == MOUNT_DATA_LIMIT
    assert len(lowers[-1]) > 255  # too long for fsconfig, so only mount(2) can take it
    tree = {'upper': '/srv/s/upper', 'work': '/srv/s/work', 'lower': lowers, 'target': '/srv/s/m'}
    assert plan_simple(tree=tree)[-1].payload == OverlayPayload('mount', data=data)
    lowers[-1] += 'c'
    with pytest.raises(PlanError, match='4095'):
        plan_simple(tree=dict(tree, lower=lowers))


NBD_TREE = {'upper': '/srv/s/upper', 'work': '/srv/s/work',
            'lower': [{'type': 'file', 'driver': 'nbd', 'format': 'qcow2', 'source': '/srv/s/guest.qcow2',
                       'target': '/srv/s/img'}, '/srv/s/base'],
            'target': '/srv/s/m'}
NBD_MOUNTED = '70 60 43:0 / /srv/s/img ro,relatime - ext4 /dev/nbd0 ro'
NBD_TOP = '71 60 0:80 / /srv/s/m rw,nodev,relatime - overlay overlay rw,lowerdir=/srv/s/img:/srv/s/base,' \
          'upperdir=/srv/s/upper,workdir=/srv/s/work'


def nbd0(server):
    return NbdDevice('/dev/nbd0', 43, 0, connected=True, server=server)


def nbd_plan(lines=(), nbds=(), nbd_loaded=True, state='mounted', **kwargs):
    roots = roots_of(NBD_TREE)
    obs = observed(roots, lines, missing=('/srv/s/m', '/srv/s/img') if not lines else (), nbds=nbds,
                   nbd_loaded=nbd_loaded, kernel='6.1.0-test')
    return plan(roots, obs, state, **kwargs)


def test_a_qcow2_layer_loads_nbd_then_attaches_read_only_with_its_format():
    steps = nbd_plan(nbd_loaded=False)
    actions = [step.action for step in steps]
    assert actions[:actions.index('mount')] == ['mkdir', 'load_module', 'attach_nbd']
    attach = steps[2]
    assert (attach.image, attach.format, attach.readonly) == ('/srv/s/guest.qcow2', 'qcow2', True)
    assert steps[3].ref == attach.ref and steps[3].device is None


def test_a_live_qemu_nbd_serving_the_image_is_matched_and_a_free_one_reused():
    serving = ImageServer('/srv/s/guest.qcow2', 'qcow2', True)
    assert nbd_plan([NBD_MOUNTED, NBD_TOP], nbds=[nbd0(serving)]) == []
    reused = nbd_plan(nbds=[nbd0(serving)])
    assert 'attach_nbd' not in [step.action for step in reused]
    assert [step.device for step in reused if step.action == 'mount' and step.kind == 'device'] == \
        ['/dev/nbd0']


def test_another_image_or_format_on_the_nbd_device_is_drift():
    for server in (ImageServer('/srv/s/other.qcow2', 'qcow2', True), ImageServer('/srv/s/guest.qcow2', 'raw', True)):
        with pytest.raises(PlanError, match='drift at'):
            nbd_plan([NBD_MOUNTED, NBD_TOP], nbds=[nbd0(server)])


def test_a_dead_qemu_nbd_is_repaired_without_asking_and_the_overlay_above_remounted():
    steps = nbd_plan([NBD_MOUNTED, NBD_TOP], nbds=[nbd0(None)])
    assert summary(steps)[:3] == [('unmount', '/srv/s/m'), ('unmount', '/srv/s/img'), ('detach_nbd', '/dev/nbd0')]
    assert [step.lazy for step in steps[:2]] == [False, False]  # nothing is lazy unless asked
    assert [step.action for step in steps[3:]] == ['attach_nbd', 'mount', 'mount']


def test_lazy_unmount_makes_every_unmount_of_the_run_lazy():
    serving = ImageServer('/srv/s/guest.qcow2', 'qcow2', True)
    for state, nbd in (('unmounted', nbd0(serving)), ('mounted', nbd0(None))):
        steps = nbd_plan([NBD_MOUNTED, NBD_TOP], nbds=[nbd], state=state, lazy_unmount=True)
        unmounts = [step for step in steps if step.action == 'unmount']
        assert len(unmounts) == 2 and all(step.lazy for step in unmounts)
        assert unmounts[0].description.startswith('lazily unmount /srv/s/m')


def test_unmounted_disconnects_the_nbd_device_last():
    serving = ImageServer('/srv/s/guest.qcow2', 'qcow2', True)
    steps = nbd_plan([NBD_MOUNTED, NBD_TOP], nbds=[nbd0(serving)], state='unmounted')
    assert summary(steps) == [('unmount', '/srv/s/m'), ('unmount', '/srv/s/img'), ('detach_nbd', '/dev/nbd0')]


def test_a_fuse_layer_exports_the_image_then_loops_the_export():
    tree = copy.deepcopy(NBD_TREE)
    tree['lower'][0]['driver'] = 'fuse'
    roots = roots_of(tree)
    steps = plan(roots, observed(roots, missing=('/srv/s/m', '/srv/s/img')), 'mounted')
    export, loop = [step for step in steps if step.action in ('start_export', 'attach_loop')]
    assert export.export == export_files('/srv/s/guest.qcow2', 'qcow2')[0]
    assert (export.format, loop.image, loop.readonly) == ('qcow2', export.export, True)


def test_a_writable_top_level_fuse_image_is_refused():
    roots = roots_of({'type': 'file', 'driver': 'fuse', 'format': 'qcow2', 'source': '/srv/s/guest.qcow2',
                      'target': '/srv/s/img'})
    with pytest.raises(PlanError, match='driver fuse serves images read-only'):
        plan(roots, observed(roots, missing=('/srv/s/img',)), 'mounted')


def test_an_image_that_is_missing_or_not_a_regular_file_is_refused_by_name():
    tree = {'upper': '/srv/s/upper', 'work': '/srv/s/work',
            'lower': [{'type': 'file', 'format': 'raw', 'source': '/srv/s/img.raw', 'target': '/srv/s/img'}],
            'target': '/srv/s/m'}
    with pytest.raises(PlanError, match=r'lower\[0\] \(file at /srv/s/img\): image /srv/s/img.raw does not exist'):
        plan_simple(tree=tree, missing=('/srv/s/m', '/srv/s/img', '/srv/s/img.raw'))
    with pytest.raises(PlanError, match='image /srv/s/img.raw is not a regular file'):
        plan_simple(tree=tree, missing=('/srv/s/m', '/srv/s/img'),
                    override={'/srv/s/img.raw': facts('/srv/s/img.raw', kind='dir')})


def test_block_source_that_is_not_a_block_device_is_refused():
    tree = {'type': 'block', 'source': '/srv/s/notdev', 'target': '/srv/s/m'}
    roots = roots_of(tree)
    obs = observed(roots, missing=('/srv/s/m',), override={'/srv/s/notdev': facts('/srv/s/notdev', kind='file')})
    with pytest.raises(PlanError, match='not a block device'):
        plan(roots, obs, 'mounted')


def test_bind_mount_matches_by_identity():
    tree = {'type': 'mount', 'source': '/srv/host', 'target': '/srv/bound'}
    roots = roots_of(tree)
    line = '90 1 8:1 /srv/host /srv/bound rw,nodev,relatime - ext4 /dev/sda1 rw'
    same = {'/srv/host': facts('/srv/host', identity=(1, 42)), '/srv/bound': facts('/srv/bound', identity=(1, 42))}
    assert plan(roots, observed(roots, [line], override=same), 'mounted') == []
    other = dict(same, **{'/srv/bound': facts('/srv/bound', identity=(1, 43))})
    with pytest.raises(PlanError, match='drift'):
        plan(roots, observed(roots, [line], override=other), 'mounted')


def test_create_dirs_false_with_a_missing_target_is_refused():
    with pytest.raises(PlanError) as error:
        plan_simple(create_dirs=False)
    assert 'target /srv/s/m does not exist (create_dirs is false)' in str(error.value)


def test_create_dirs_false_with_a_missing_upper_is_refused():
    with pytest.raises(PlanError, match='upper /srv/s/upper does not exist'):
        plan_simple(missing=('/srv/s/upper',), create_dirs=False, override=None)


def test_create_dirs_false_with_everything_present_mounts():
    assert summary(plan_simple(missing=(), create_dirs=False)) == [('mount', '/srv/s/m')]


def test_a_missing_lower_dir_is_refused_even_with_create_dirs():
    with pytest.raises(PlanError, match='lower dir /srv/s/l2 does not exist'):
        plan_simple(missing=('/srv/s/m', '/srv/s/l2'))


def test_a_target_that_is_a_file_is_refused():
    with pytest.raises(PlanError, match='target /srv/s/m exists and is not a directory'):
        plan_simple(missing=(), override={'/srv/s/m': facts('/srv/s/m', kind='file')})


def test_two_fuse_layers_of_one_image_share_one_export_started_once():
    tree = {'lower': [{'type': 'file', 'driver': 'fuse', 'format': 'qcow2', 'source': '/srv/s/guest.qcow2',
                       'target': '/srv/s/one'},
                      {'type': 'file', 'driver': 'fuse', 'format': 'qcow2', 'source': '/srv/s/guest.qcow2',
                       'target': '/srv/s/two'}],
            'target': '/srv/s/m'}
    roots = roots_of(tree)
    steps = plan(roots, observed(roots, missing=('/srv/s/m', '/srv/s/one', '/srv/s/two')), 'mounted')
    assert [step.action for step in steps].count('start_export') == 1
    assert [step.action for step in steps].count('attach_loop') == 2


def test_unmounting_one_tree_keeps_an_export_another_trees_loop_device_reads():
    export = export_files('/srv/s/guest.qcow2', 'qcow2')[0]
    tree = {'type': 'file', 'driver': 'fuse', 'format': 'qcow2', 'source': '/srv/s/guest.qcow2',
            'target': '/srv/s/one', 'readonly': True}
    roots = roots_of(tree)
    mine = LoopDevice('/dev/loop0', 7, 0, export, True, [])
    theirs = LoopDevice('/dev/loop1', 7, 1, export, True, [])
    live = FuseExport(export, export[:-4] + '.pid', export[:-4] + '.json', ImageServer('/srv/s/guest.qcow2', 'qcow2', True))
    lines = ['70 1 7:0 / /srv/s/one ro,relatime - ext4 /dev/loop0 ro', '71 1 7:1 / /srv/x ro,relatime - ext4 /dev/loop1 ro']
    steps = plan(roots, observed(roots, lines, loops=[mine, theirs], exports=[live]), 'unmounted')
    assert [step.action for step in steps] == ['unmount', 'detach_loop']
    alone = plan(roots, observed(roots, lines[:1], loops=[mine], exports=[live]), 'unmounted')
    assert [step.action for step in alone] == ['unmount', 'detach_loop', 'stop_export']


def test_an_nbd_device_served_by_something_other_than_qemu_nbd_is_drift_not_ours_to_repair():
    foreign = NbdDevice('/dev/nbd0', 43, 0, connected=True, server=None, foreign=True)
    with pytest.raises(PlanError, match='drift at'):
        nbd_plan([NBD_MOUNTED, NBD_TOP], nbds=[foreign])


def test_a_target_that_is_a_symlink_is_refused_and_a_symlinked_parent_is_not():
    roots = roots_of(TREE)
    link = facts('/srv/t/merged', realpath='/elsewhere/merged')
    obs = observed(roots, missing=TARGETS[1:], override={'/srv/t/merged': link._replace(is_symlink=True)})
    with pytest.raises(PlanError, match=r'target /srv/t/merged is a symlink \(to /elsewhere/merged\); give the '
                                        r'directory itself'):
        plan(roots, obs, 'mounted')
    obs = observed(roots, missing=TARGETS[1:], override={'/srv/t/merged': link})
    assert summary(plan(roots, obs, 'mounted'))[-1] == ('mount', '/srv/t/merged')


CONTAINER = {'upper': '/srv/ct/upper', 'work': '/srv/ct/work', 'lower': ['/srv/base'], 'target': '/srv/ct/merged'}
INSIDE = {'upper': '/srv/ct/merged/var/u', 'work': '/srv/ct/merged/var/w', 'lower': ['/srv/base'],
          'target': '/srv/ct/merged/data'}
VIEW = ('/srv/ct/merged', 'the merged view of the overlay at /srv/ct/merged')


def confined_plan(symlink=None, state='mounted', lines=()):
    roots = roots_of(CONTAINER, INSIDE)
    override = {}
    for path in ('/srv/ct/merged/var/u', '/srv/ct/merged/var/w', '/srv/ct/merged/data'):
        override[path] = facts(path, kind=None)._replace(
            beneath=(VIEW[0], path[len(VIEW[0]) + 1:]), opened_by=VIEW[1],
            symlink_inside=symlink if path.endswith('data') else None)
    obs = observed(roots, lines, missing=('/srv/ct/merged', '/srv/ct/upper', '/srv/ct/work'), override=override,
                   views=dict([VIEW]))
    return plan(roots, obs, state)


def test_steps_inside_another_overlays_view_carry_where_it_begins():
    steps = confined_plan()
    inside = [one for one in steps if one.node == 'filesystems[1]']
    assert [(one.action, one.beneath) for one in inside] == [
        ('mkdir', (VIEW[0], 'data')), ('mkdir', (VIEW[0], 'var/u')), ('mkdir', (VIEW[0], 'var/w')),
        ('mount', (VIEW[0], 'data'))]
    assert all(one.beneath is None for one in steps if one.node == 'filesystems[0]')


def test_layers_sources_and_images_inside_another_overlays_view_are_reached_from_where_it_begins():
    """Every path below a view reaches the step that uses it with (the view, the rest): the executor opens it from
    there, following no symlink, and hands the kernel, losetup or qemu the fd."""
    inside = dict((name, '/srv/ct/merged/' + name) for name in ('layer', 'src', 'disk', 'img.raw'))
    tree = {'upper': '/srv/v/upper', 'work': '/srv/v/work', 'target': '/srv/v/merged', 'lower': [
        inside['layer'], {'type': 'mount', 'source': inside['src'], 'target': '/srv/v/bound'},
        {'type': 'block', 'source': inside['disk'], 'target': '/srv/v/disk'},
        {'type': 'file', 'source': inside['img.raw'], 'format': 'raw', 'target': '/srv/v/img'}]}
    roots = roots_of(CONTAINER, tree)
    kinds = {'layer': 'dir', 'src': 'dir', 'disk': 'block', 'img.raw': 'file'}
    override = dict((path, facts(path, kind=kinds[name], rdev=(8, 16) if name == 'disk' else None)._replace(
        beneath=(VIEW[0], name), opened_by=VIEW[1])) for name, path in inside.items())
    obs = observed(roots, missing=('/srv/ct/merged', '/srv/ct/upper', '/srv/ct/work', '/srv/v/merged', '/srv/v/upper',
                                   '/srv/v/work', '/srv/v/bound', '/srv/v/disk', '/srv/v/img'),
                   override=override, views=dict([VIEW]))
    planned = dict(((type(one).__name__, one.node), one) for one in plan(roots, obs, 'mounted'))
    assert planned['MountBind', 'filesystems[1].lower[1]'].source_beneath == (VIEW[0], 'src')
    assert planned['MountDevice', 'filesystems[1].lower[2]'].device_beneath == (VIEW[0], 'disk')
    assert planned['MountDevice', 'filesystems[1].lower[3]'].device_beneath is None  # the loop device: ours
    assert planned['AttachLoop', 'filesystems[1].lower[3]'].image_beneath == (VIEW[0], 'img.raw')
    assert planned['MountOverlay', 'filesystems[1]'].reach == (
        (inside['layer'], (VIEW[0], 'layer')), ('/srv/v/bound', None), ('/srv/v/disk', None), ('/srv/v/img', None),
        ('/srv/v/upper', None), ('/srv/v/work', None))


def test_a_symlink_inside_another_overlays_view_is_refused_by_name():
    for state in ('mounted', 'unmounted'):
        with pytest.raises(PlanError) as error:
            confined_plan(symlink=('/srv/ct/merged/data', '/'), state=state)
        assert str(error.value) == (
            'filesystems[1] (overlay at /srv/ct/merged/data): target /srv/ct/merged/data: /srv/ct/merged/data is a '
            'symlink (to /) inside the merged view of the overlay at /srv/ct/merged; symlinks there are not followed')


# --- idmapped layers ---------------------------------------------------------------------------------------

def id_shift(target):
    ranges = [{'start': 0, 'target': target, 'count': 65536}]
    return {'uid': ranges, 'gid': list(ranges)}


IDMAPPED_TREE = {'upper': '/srv/i/upper', 'work': '/srv/i/work', 'target': '/srv/i/merged', 'lower': ['/srv/i/base'],
                 'idmap': id_shift(100000)}
IDMAP_PATH = idmap_mount_path('/srv/i/merged', '/srv/i/base')
IDMAPPED_MOUNTED = '60 1 8:1 /srv/i/base %s rw,relatime,idmapped - ext4 /dev/sda1 rw' % IDMAP_PATH
IDMAPPED_TOP = ('61 1 0:61 / /srv/i/merged rw,nodev,relatime - overlay overlay rw,lowerdir=%s,upperdir=/srv/i/upper,'
                'workdir=/srv/i/work' % IDMAP_PATH)


def idmapped_host(roots, lines=(IDMAPPED_MOUNTED, IDMAPPED_TOP), shown=100000, owners=None, **host):
    """The tree's base dir cloned at its idmapped mount path (one identity), ``shown`` the mapping read back."""
    base = facts('/srv/i/base', identity=(8, 1))._replace(owner=(0, 0))
    clone = facts(IDMAP_PATH, identity=(8, 1))._replace(owner=owners or (shown, shown))
    idmaps = {IDMAP_PATH: parse_idmap(id_shift(shown), 'x') if shown and not owners else None}
    return observed(roots, lines, override={'/srv/i/base': base, IDMAP_PATH: clone}, idmaps=idmaps, **host)


def test_an_idmapped_layer_is_mounted_before_its_overlay_and_a_new_upper_dir_belongs_to_the_mapped_root():
    roots = roots_of(IDMAPPED_TREE)
    steps = plan(roots, observed(roots, missing=(IDMAP_PATH, '/srv/i/upper', '/srv/i/merged')), 'mounted',
                 create_dirs=True)
    assert summary(steps) == [('mount', IDMAP_PATH), ('mkdir', '/srv/i/merged'), ('mkdir', '/srv/i/upper'),
                              ('mount', '/srv/i/merged')]
    assert (steps[0].kind, steps[0].source, steps[0].idmap.summary()) == (
        'idmapped', '/srv/i/base', 'uid 0->100000 (65536), gid 0->100000 (65536)')
    assert steps[0].to_dict()['idmap'] == id_shift(100000)
    assert steps[2].owner == (100000, 100000) and steps[1].owner is None
    assert steps[3].lowers == (IDMAP_PATH,)


def test_the_mount_point_of_an_idmapped_layer_is_its_mount_steps_to_make_even_without_create_dirs():
    roots = roots_of(IDMAPPED_TREE)
    steps = plan(roots, observed(roots, missing=(IDMAP_PATH,)), 'mounted', create_dirs=False)
    assert summary(steps)[0] == ('mount', IDMAP_PATH)


@pytest.mark.parametrize('shown, owners', [(100000, None), (None, (100000, 100000))])
def test_an_idmapped_layer_with_its_mapping_matches_read_back_or_by_its_roots_owner(shown, owners):
    roots = roots_of(IDMAPPED_TREE)
    assert plan(roots, idmapped_host(roots, shown=shown, owners=owners), 'mounted') == []


def test_a_read_only_clone_of_a_layer_on_a_read_only_mount_matches():
    roots = roots_of(IDMAPPED_TREE)
    lines = (IDMAPPED_MOUNTED.replace(' rw,relatime,idmapped', ' ro,relatime,idmapped'), IDMAPPED_TOP)
    assert plan(roots, idmapped_host(roots, lines), 'mounted') == []


@pytest.mark.parametrize('shown, owners, why', [
    (200000, None, 'it maps uid 0->200000 (65536), gid 0->200000 (65536)'),
    (None, (200000, 200000), 'its root, owned by 0:0 on disk, shows as 200000:200000, not 100000:100000'),
])
def test_a_changed_mapping_is_drift_naming_both_mappings(shown, owners, why):
    roots = roots_of(IDMAPPED_TREE)
    with pytest.raises(PlanError) as error:
        plan(roots, idmapped_host(roots, shown=shown, owners=owners), 'mounted')
    assert 'drift at filesystems[0].lower[0].idmap (idmapped at %s)' % IDMAP_PATH in str(error.value)
    assert why in str(error.value)
    assert 'wanted: /srv/i/base idmapped (uid 0->100000 (65536), gid 0->100000 (65536))' in str(error.value)


def test_a_changed_mapping_with_replace_remounts_the_layer_and_its_overlay():
    roots = roots_of(IDMAPPED_TREE)
    steps = plan(roots, idmapped_host(roots, shown=200000), 'mounted', on_drift='replace')
    assert summary(steps) == [('unmount', '/srv/i/merged'), ('unmount', IDMAP_PATH), ('mount', IDMAP_PATH),
                              ('mount', '/srv/i/merged')]
    assert steps[1].restore.idmap == parse_idmap(id_shift(200000), 'x')  # an undo mounts it back as it was


def test_a_mapping_that_cannot_be_read_back_cannot_be_restored_by_an_undo():
    roots = roots_of(IDMAPPED_TREE)
    steps = plan(roots, idmapped_host(roots, shown=None, owners=(200000, 200000)), 'mounted', on_drift='replace')
    assert steps[1].restore.action == 'cannot_restore'


def test_a_plain_bind_where_an_idmapped_layer_belongs_is_drift():
    roots = roots_of(IDMAPPED_TREE)
    lines = (IDMAPPED_MOUNTED.replace(',idmapped', ''), IDMAPPED_TOP)
    with pytest.raises(PlanError, match='ext4 from /dev/sda1 is mounted there, not idmapped'):
        plan(roots, idmapped_host(roots, lines), 'mounted')


def test_unmounting_an_idmapped_tree_takes_its_layers_mount_after_the_overlay():
    roots = roots_of(IDMAPPED_TREE)
    steps = plan(roots, idmapped_host(roots), 'unmounted')
    assert summary(steps) == [('unmount', '/srv/i/merged'), ('unmount', IDMAP_PATH)]
    assert [one.remove_mount_point for one in steps] == [False, True]  # the layer's mount point goes with it


# --- a nested base two trees share ---------------------------------------------------------------------------

BASE = {'type': 'overlay', 'upper': '/srv/s/base/upper', 'work': '/srv/s/base/work', 'lower': ['/srv/s/image'],
        'target': '/srv/s/base/merged'}
SHARING = dict((name, {'upper': '/srv/s/%s/upper' % name, 'work': '/srv/s/%s/work' % name, 'lower': [BASE],
                       'target': '/srv/s/%s/merged' % name}) for name in ('one', 'two'))
BASE_MOUNTED = ('60 1 0:60 / /srv/s/base/merged rw - overlay overlay rw,lowerdir=/srv/s/image,'
                'upperdir=/srv/s/base/upper,workdir=/srv/s/base/work')
SHARING_MOUNTED = dict((name, '%d 1 0:%d / /srv/s/%s/merged rw,nodev - overlay overlay rw,lowerdir=/srv/s/base/merged,'
                              'upperdir=/srv/s/%s/upper,workdir=/srv/s/%s/work' % (number, number, name, name, name))
                       for number, name in ((61, 'one'), (62, 'two')))
KERNEL_WORKDIRS = dict((path, facts(path, entries=KERNEL_WORKDIR))
                       for path in ('/srv/s/base/work', '/srv/s/one/work', '/srv/s/two/work'))


def test_a_base_another_tree_stands_on_is_not_unmounted_from_under_it():
    roots = roots_of(SHARING['one'])
    obs = observed(roots, [BASE_MOUNTED, SHARING_MOUNTED['one'], SHARING_MOUNTED['two']])
    for lazy in (False, True):
        with pytest.raises(PlanError) as error:
            plan(roots, obs, 'unmounted', lazy_unmount=lazy)
        assert str(error.value) == (
            'filesystems[0].lower[0]: refusing to unmount /srv/s/base/merged: the overlay mounted at /srv/s/two/merged '
            '(not in this run) stands on what is mounted there now, and would keep it alive, hidden, with its upper '
            'and work dirs in use. Unmount the tree at /srv/s/two/merged first')
    alone = observed(roots, [BASE_MOUNTED, SHARING_MOUNTED['one']])  # once two is gone, one takes the base too
    assert summary(plan(roots, alone, 'unmounted')) == [('unmount', '/srv/s/one/merged'),
                                                        ('unmount', '/srv/s/base/merged')]


def test_a_base_unmounted_from_under_another_tree_is_not_mounted_again_on_the_upper_dir_the_old_one_holds():
    roots = roots_of(SHARING['one'])
    obs = observed(roots, [SHARING_MOUNTED['two']], missing=('/srv/s/one/merged',), override=KERNEL_WORKDIRS)
    with pytest.raises(PlanError, match=r'filesystems\[0\]\.lower\[0\]: refusing to mount an overlay on '
                                        r'/srv/s/base/merged: the overlay mounted at /srv/s/two/merged \(not in this '
                                        r'run\) stands on'):
        plan(roots, obs, 'mounted')


def test_an_overlay_whose_lower_was_mounted_again_under_it_is_stale_not_ok():
    roots = roots_of(SHARING['two'])
    # two was mounted first, on a base that went; the base listed after it is a later mount
    lines = [SHARING_MOUNTED['two'], BASE_MOUNTED.replace('60 1 0:60', '70 1 0:70')]
    obs = observed(roots, lines, override=KERNEL_WORKDIRS)
    with pytest.raises(PlanError, match=r'\(overlay at /srv/s/two/merged\) is mounted, but not on the layers'):
        plan(roots, obs, 'mounted')
    steps = plan(roots, obs, 'mounted', on_drift='replace')
    assert summary(steps) == [('unmount', '/srv/s/two/merged'), ('mount', '/srv/s/two/merged')]
    in_order = observed(roots, [BASE_MOUNTED, SHARING_MOUNTED['two']])
    assert plan(roots, in_order, 'mounted') == []
