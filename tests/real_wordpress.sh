#!/bin/sh
# A real WordPress on loopback for tests/test_wordpress.py::test_the_tools_against_a_real_wordpress:
# Debian's `wordpress` package (unpacked, without its Apache), PHP's built-in server and the
# local MariaDB. Needs root (apt-get, mysql as root). About a minute on a Debian 12 machine.
#
#   eval "$(sh tests/real_wordpress.sh)"   # prints the BIZ_TEST_WORDPRESS_* exports
#   make test ARGS=tests/test_wordpress.py  (or pytest tests/test_wordpress.py -k real)
#
# WORDPRESS_DIR (default /tmp/bizosaas-wordpress) holds the site; WORDPRESS_PORT (8799) its port.
set -eu
DIR=${WORDPRESS_DIR:-/tmp/bizosaas-wordpress}
PORT=${WORDPRESS_PORT:-8799}
DB=${WORDPRESS_DB:-bizosaas_wp_test}

apt-get install -y --no-install-recommends php-cli php-mysql >&2
mkdir -p "$DIR"
(cd "$DIR" && apt-get download wordpress >&2 && dpkg-deb -x wordpress_*.deb root)
WP="$DIR/root/usr/share/wordpress"
mysql -uroot -e "CREATE DATABASE IF NOT EXISTS $DB; CREATE USER IF NOT EXISTS 'bizwp'@'127.0.0.1' IDENTIFIED BY 'bizwp';
                 GRANT ALL ON $DB.* TO 'bizwp'@'127.0.0.1';"
cat > "$WP/wp-config.php" <<EOF
<?php
define('DB_NAME', '$DB'); define('DB_USER', 'bizwp'); define('DB_PASSWORD', 'bizwp'); define('DB_HOST', '127.0.0.1');
define('DB_CHARSET', 'utf8mb4'); define('DB_COLLATE', '');
\$table_prefix = 'wp_';
define('WP_HOME', 'http://127.0.0.1:$PORT'); define('WP_SITEURL', 'http://127.0.0.1:$PORT');
// Application passwords over plain http on loopback: WordPress allows them on a 'local' site.
define('WP_ENVIRONMENT_TYPE', 'local');
foreach (array('AUTH_KEY', 'SECURE_AUTH_KEY', 'LOGGED_IN_KEY', 'NONCE_KEY', 'AUTH_SALT', 'SECURE_AUTH_SALT',
               'LOGGED_IN_SALT', 'NONCE_SALT') as \$k) { define(\$k, 'bizosaas-test-' . \$k); }
if (!defined('ABSPATH')) define('ABSPATH', __DIR__ . '/');
require_once ABSPATH . 'wp-settings.php';
EOF
cat > "$DIR/install.php" <<EOF
<?php
define('WP_INSTALLING', true);
\$_SERVER['HTTP_HOST'] = '127.0.0.1:$PORT';
require '$WP/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';
if (!is_blog_installed()) { wp_install('BizOSaaS test blog', 'admin', 'admin@example.com', true, '', wp_generate_password(24)); }
update_option('permalink_structure', '/%postname%/');
\$user = get_user_by('login', 'admin');
list(\$password, \$item) = WP_Application_Passwords::create_new_application_password(\$user->ID, array('name' => 'tests-' . time()));
echo WP_Application_Passwords::chunk_password(\$password);
EOF
PASSWORD=$(php "$DIR/install.php" 2>/dev/null | tail -n 1)
(cd "$WP" && PHP_CLI_SERVER_WORKERS=4 nohup php -S "127.0.0.1:$PORT" > "$DIR/php.log" 2>&1 &)
echo "export BIZ_TEST_WORDPRESS_URL=http://127.0.0.1:$PORT BIZ_TEST_WORDPRESS_USER=admin"
echo "export BIZ_TEST_WORDPRESS_APP_PASSWORD='$PASSWORD'"
