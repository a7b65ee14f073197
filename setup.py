"Packaging for miniai: reads nbdev's settings.ini (no pkg_resources, which setuptools 82 removed)."
from configparser import ConfigParser
import shlex
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

def reqs(key): return shlex.split(cfg.get(key, '')) if cfg.get(key, '').strip() else []

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
lic = licenses[cfg['license']]
py_versions = '3.10 3.11 3.12 3.13'.split()
min_python = cfg['min_python']

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author=cfg['author'], author_email=cfg['author_email'],
    url=cfg['git_url'],
    license=lic[0],
    classifiers=[f'Development Status :: {statuses[int(cfg["status"])]}', f'Intended Audience :: {cfg["audience"].title()}',
                 f'License :: {lic[1]}', f'Natural Language :: {cfg["language"].title()}']
                + [f'Programming Language :: Python :: {v}' for v in py_versions[py_versions.index(min_python):]],
    packages=setuptools.find_packages(include=['miniai', 'miniai.*']),
    include_package_data=True,
    package_data={'miniai': ['data/*/*']},
    install_requires=reqs('requirements'),
    extras_require={'dev': reqs('dev_requirements'), 'distributed': reqs('distributed_requirements'),
                    'logging': reqs('logging_requirements'), 'timm': reqs('timm_requirements')},
    python_requires=f'>={min_python}',
    zip_safe=False,
    entry_points={'console_scripts': reqs('console_scripts'), 'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d']},
)
