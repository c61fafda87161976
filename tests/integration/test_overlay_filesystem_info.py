# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""overlay_filesystem_info on a host set up by hand (mount(8), losetup), and the round trip: what it reads, fed to
overlay_filesystem as YAML and as XML, plans nothing and changes nothing, and fed to the role persists exactly
those trees."""

from __future__ import annotations

import glob
import json
import os
import sys

from ansible_collections.containerhost.overlayfs.tests.helpers.host import checked, make_ext4_image, mounts_under, run

ROUND_TRIP = '''- hosts: localhost
  gather_facts: false
  tasks:
    - name: Read the trees
      containerhost.overlayfs.overlay_filesystem_info:
        under: "{{ root }}"
      register: found
    - name: Feed them back as YAML
      containerhost.overlayfs.overlay_filesystem:
        filesystems: "{{ found.filesystems }}"
      register: as_yaml
    - name: Feed them back as XML
      containerhost.overlayfs.overlay_filesystem:
        xml: "{{ found.xml }}"
      register: as_xml
    - name: Persist them with the role, under a scratch root
      ansible.builtin.include_role:
        name: containerhost.overlayfs.overlay_mounts
      vars:
        overlay_mounts_root: "{{ persist }}"
        overlay_mounts_persistence: systemd
        overlay_mounts_install_packages: false
        overlay_mounts_python: "{{ ansible_python_interpreter }}"
        overlay_mounts_filesystems:
          - xml: "{{ found.xml }}"
    - name: Keep the results for the test
      ansible.builtin.copy:
        content: "{{ {'found': found, 'as_yaml': as_yaml, 'as_xml': as_xml} | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
'''


def set_up_by_hand(host):
    """Overlays of every kind this machine can make, with mount(8) and losetup, none of them by the module."""
    path = host.path
    host.make_dirs('base', 'runtime', 'odd, name: x', 'bind-src', 'bind', 'img', 'rel/l1',
                   *['%s/%s' % (tree, part) for tree in ('shared', 'ct1', 'ct2', 'ct3', 'ct4', 'dup', 'rel')
                     for part in ('upper', 'work', 'm')])
    host.write('base/os-release', 'debian')
    image = make_ext4_image(host, 'tools.img', {'bin/tool': 'a tool'})
    device = checked(['losetup', '--find', '--show', '--read-only', image]).stdout.strip()
    checked(['mount', '-o', 'ro', device, path('img')])
    checked(['mount', '--bind', path('bind-src'), path('bind')])
    checked(['mount', '-o', 'remount,bind,ro', path('bind')])

    def overlay(tree, lowers, extra=''):
        data = 'lowerdir=%s,upperdir=%s,workdir=%s%s' % (lowers, path(tree, 'upper'), path(tree, 'work'), extra)
        checked(['mount', '-t', 'overlay', 'by-hand', '-o', data, path(tree, 'm')])

    overlay('shared', path('base'))  # a base two containers stand on
    overlay('ct1', '%s:%s' % (path('shared', 'm'), path('runtime')))
    overlay('ct2', '%s:%s:%s' % (path('shared', 'm'), path('img'), path('bind')), ',redirect_dir=on')
    overlay('ct3', path('odd\\, name\\: x'), ',index=on')  # escapes, as the kernel takes them
    overlay('ct4', path('ct3', 'm'), ',nosuid,nodev')  # nested in ct4 alone; mount(8) takes the flags as flags
    checked(['mount', '-t', 'overlay', 'by-hand', '-o', 'lowerdir+=%s,lowerdir+=%s,upperdir=%s,workdir=%s' % (
        path('runtime'), path('base'), path('dup', 'upper'), path('dup', 'work')), path('dup', 'm')])
    checked(['mount', '-t', 'overlay', 'by-hand', '-o', 'lowerdir=l1,upperdir=%s,workdir=%s' % (
        path('rel', 'upper'), path('rel', 'work')), path('rel', 'm')], cwd=path('rel'))


def test_a_host_set_up_by_hand_reads_back_as_trees_that_plan_nothing(host):
    set_up_by_hand(host)
    mounted_by_hand = [(entry.mount_id, entry.mountpoint) for entry in mounts_under(host.root)]
    persist = os.path.join(host.runs_dir, 'persist')
    result_file = os.path.join(host.runs_dir, 'round-trip.json')
    playbook = os.path.join(host.runs_dir, 'round-trip.yml')
    with open(playbook, 'w') as handle:
        handle.write(ROUND_TRIP)
    completed = run(['ansible-playbook', '-i', 'localhost,', '-c', 'local', '-e', 'root=' + host.root,
                     '-e', 'result_file=' + result_file, '-e', 'persist=' + persist, '-e', 'ansible_python_interpreter=' + sys.executable, playbook])
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-2000:]
    with open(result_file) as handle:
        results = json.load(handle)
    found = results['found']
    trees = dict((tree['target'], tree) for tree in found['filesystems'])
    path = host.path
    assert sorted(trees) == sorted(path(tree, 'm') for tree in ('shared', 'ct1', 'ct2', 'ct4', 'dup'))
    assert trees[path('ct1', 'm')]['lower'] == [path('shared', 'm'), path('runtime')]
    assert trees[path('ct2', 'm')]['lower'] == [
        path('shared', 'm'),
        {'type': 'file', 'source': path('tools.img'), 'driver': 'loop', 'format': 'raw', 'target': path('img')},
        {'type': 'mount', 'source': path('bind-src'), 'target': path('bind'), 'readonly': True}]
    assert trees[path('ct2', 'm')]['options'] == {'redirect_dir': 'on'}
    assert trees[path('ct4', 'm')]['lower'] == [
        {'type': 'overlay', 'upper': path('ct3', 'upper'), 'work': path('ct3', 'work'), 'lower': [path('odd, name: x')],
         'options': {'index': 'on'}, 'target': path('ct3', 'm')}]
    assert trees[path('dup', 'm')]['lower'] == [path('runtime'), path('base')]
    # mount flags: shown where not the default (nodev), so a tree fed back asks for what is mounted
    assert [trees[path(tree, 'm')].get('mount_flags') for tree in ('ct1', 'ct4')] == [[], ['nodev', 'nosuid']]
    assert found['unexpressed'] == [{'target': path('rel', 'm'), 'reason': "its lower layer 'l1' is relative, as it "
                                     "was given to mount; a tree names absolute paths"}]
    for fed in ('as_yaml', 'as_xml'):
        assert results[fed]['changed'] is False and results[fed]['plan'] == [], results[fed]
    assert [(entry.mount_id, entry.mountpoint) for entry in mounts_under(host.root)] == mounted_by_hand
    persisted = set()
    for unit in glob.glob(os.path.join(persist, 'etc', 'systemd', 'system', '*.mount')):
        with open(unit) as handle:
            persisted.update(line.split('=', 1)[1] for line in handle.read().splitlines() if line.startswith('Where='))
    # every tree, its nested overlay and its image and bind layers: what the trees mount, and nothing else
    assert persisted == set(trees) | {path('ct3', 'm'), path('img'), path('bind')}
